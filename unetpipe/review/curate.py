"""Corrected labels back into training: export a reviewed sample (or a region of
it) as image + labels where the workflow picks them up as curated data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from .store import LabelStore, _check_identity, _fsync_tree, recover, store_lock

log = logging.getLogger("unetpipe")


def curated_folder(results: str | os.PathLike) -> Path:
    """Where corrected training data go: ``data.curated`` of the ``config.yaml``
    beside the results folder (relative to that folder's parent), else
    ``resources/curated`` there."""
    project = Path(os.path.abspath(os.fspath(results))).parent
    config = project / "config.yaml"
    value = "resources/curated"
    if config.exists():
        import yaml

        try:
            cfg = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(os.fspath(config), f"is not valid YAML ({e})") from None
        data = cfg.get("data") if isinstance(cfg, Mapping) else None
        if isinstance(data, Mapping) and "curated" in data:
            value = data["curated"]
            if not value:
                raise InputError(os.fspath(config), "data.curated is null: curated training "
                                                    "data are switched off")
    path = Path(os.fspath(value))
    return path if path.is_absolute() else project / path


def export_training(store: LabelStore, *, box: Sequence[slice] | None = None,
                    folder: str | os.PathLike | None = None,
                    name: str | None = None) -> Path:
    """Write the corrected labels and their image as curated training data.

    The folder ``{folder}/{name}`` gets ``image.tif`` (level 0 of the
    preprocessed image: float32, normalised; training preprocesses it again,
    which leaves it as it is up to a linear rescaling) and ``labels.tif``,
    both with the pixel size. It is written under a hidden temporary name
    and renamed when complete, so the workflow never sees half an export
    (:func:`unetpipe.inputs.samples.curated_samples` skips hidden folders).

    Parameters
    ----------
    store : LabelStore
    box : sequence of slice, optional
        Export only this region (default: the whole image).
    folder : path, optional
        Default :func:`curated_folder` of the results folder.
    name : str, optional
        Default the sample name (with the region's start for a region).

    Returns
    -------
    pathlib.Path
        The folder written; it becomes the training sample ``curated-{name}``.
    """
    from ..io.images import atomic_output, read_image, write_tiff

    paths = store.paths
    recover(paths)
    _check_identity(store)
    whole = box is None
    box = tuple(slice(0, n) for n in store.shape) if box is None else tuple(box)
    if name is None:
        name = paths.sample if whole else paths.sample + "".join(
            f"-{a}{s.start}" for a, s in zip("zyx"[-store.ndim:], box, strict=True))
    folder = curated_folder(paths.results) if folder is None else Path(os.fspath(folder))
    if not paths.image.exists():
        raise InputError(os.fspath(paths.image), "preprocessed image not found; it is needed "
                                                 "to export training data")
    image = read_image(paths.image)
    if image.spatial_shape != store.shape:
        raise InputError(os.fspath(paths.image), f"shape {image.spatial_shape} differs from "
                                                 f"the labels' {store.shape}")
    has_c = "c" in image.axes
    pixels = np.asarray(image.data[((slice(None),) if has_c else ()) + box].compute(),
                        dtype=np.float32)
    axes = image.axes
    if has_c and pixels.shape[0] == 1:
        pixels, axes = pixels[0], axes[1:]
    with store_lock(paths):  # not half way through a save
        labels = store.read(box)
    spacing = store.spacing if store.unit else None
    with atomic_output(folder / name) as tmp:
        tmp.mkdir(parents=True)
        write_tiff(tmp / "image.tif", pixels, axes=axes, spacing=spacing)
        write_tiff(tmp / "labels.tif", labels.astype(np.uint32, copy=False),
                   axes=axes.replace("c", ""), spacing=spacing)
        _fsync_tree(tmp)
    log.info("exported %s as training data to %s", paths.sample, folder / name)
    return folder / name
