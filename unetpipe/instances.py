"""Instances from class probabilities: the simple step used during training.

The network predicts, per pixel, background and cell (``two_class``; the
gaps between touching cells are background) or background, cell interior and
cell boundary (``three_class``). Separated cells are then the connected
components of the cell (interior) class.
"""

from __future__ import annotations

import numpy as np


def connected_instances(probabilities, *, mode: str = "two_class", min_size: int = 0,
                        grow: int = 2) -> np.ndarray:
    """Instance labels from class probabilities by connected components.

    Parameters
    ----------
    probabilities : ndarray of shape (K, *S)
        Per-class probabilities (or any scores whose arg-max is the class),
        K = 2 for ``two_class``, 3 for ``three_class``.
    mode : {"two_class", "three_class"}
        Target mode the network was trained with.
    min_size : int
        Components with fewer pixels are dropped.
    grow : int
        ``three_class`` only: interior components grow by up to this many
        pixels into the pixels predicted as boundary, to recover the cells'
        outlines.

    Returns
    -------
    ndarray of int32, shape S
        Instance labels, 0 = background, ids 1..n.
    """
    from scipy import ndimage as ndi

    probabilities = np.asarray(probabilities)
    expected = {"two_class": 2, "three_class": 3}.get(mode)
    if expected is None:
        raise ValueError(f"mode must be 'two_class' or 'three_class', got {mode!r}")
    if probabilities.shape[0] != expected:
        raise ValueError(f"{mode} needs {expected} class channels, got probabilities of shape "
                         f"{probabilities.shape}")
    classes = np.argmax(probabilities, axis=0)
    structure = ndi.generate_binary_structure(classes.ndim, 1)
    labels, n = ndi.label(classes == 1, structure=structure)
    if mode == "three_class" and grow > 0 and n:
        from skimage.segmentation import expand_labels

        grown = expand_labels(labels, distance=grow)
        labels = np.where((labels == 0) & (classes == 2), grown, labels)
    if min_size > 0 and n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    from skimage.segmentation import relabel_sequential

    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)
