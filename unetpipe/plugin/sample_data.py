"""napari sample data (npe2 command ``unetpipe.touching_cells``)."""

from __future__ import annotations

SHAPE = (256, 256)
SEED = 7
# Crowded: most nuclei start a cluster of up to eight pressed against each other.
OPTIONS = {"fill_fraction": 0.45, "cluster_fraction": 0.9, "max_cluster_size": 8}


def touching_cells() -> list[tuple]:
    """A synthetic 256 x 256 image of touching nuclei with its instance labels.

    Returns
    -------
    list of (data, metadata, layer type)
        ``"touching cells"``: uint16 fluorescence image of shape (256, 256),
        raw (not normalised), as a microscope gives it; ``"touching cells
        ground truth"``: its exact instance labels, 0 = background.

    Notes
    -----
    Made by :func:`unetpipe.inputs.synth.synthetic_nuclei` with a fixed seed, so it
    is the same every time: about 120 nuclei, most of them in clusters that
    share a boundary (the case the U-Net's separation weights are for).
    """
    from ..inputs.synth import synthetic_nuclei

    image, labels = synthetic_nuclei(SHAPE, seed=SEED, **OPTIONS)
    return [
        (image, {"name": "touching cells", "colormap": "gray"}, "image"),
        (labels, {"name": "touching cells ground truth", "opacity": 0.5}, "labels"),
    ]
