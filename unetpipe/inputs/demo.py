"""The built-in demo data set: synthetic nuclei with exact ground truth.

The demo has training, validation and larger prediction images, all with
instance labels, written as TIFF files under one folder::

    {dir}/train/images/train_000.tif    {dir}/train/labels/train_000.tif
    {dir}/val/images/val_000.tif        {dir}/val/labels/val_000.tif
    {dir}/predict/images/predict_000.tif {dir}/predict/labels/predict_000.tif

:func:`demo_manifest` lists these files without writing them, so the workflow
knows its samples before the data exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

ROLES = ("train", "val", "predict")


@dataclass(frozen=True)
class DemoItem:
    """One demo image and its labels, as paths relative to the demo folder."""

    role: str
    name: str
    index: int

    @property
    def image(self) -> str:
        return f"{self.role}/images/{self.name}.tif"

    @property
    def labels(self) -> str:
        return f"{self.role}/labels/{self.name}.tif"


def demo_manifest(*, n_train: int, n_val: int, n_predict: int) -> list[DemoItem]:
    """The demo's images, in a fixed order."""
    counts = {"train": n_train, "val": n_val, "predict": n_predict}
    return [DemoItem(role, f"{role}_{i:03d}", i) for role in ROLES for i in range(counts[role])]


def demo_files(directory: str, *, n_train: int, n_val: int, n_predict: int) -> list[str]:
    """Every file the demo writes (images and labels), as paths under ``directory``."""
    out = []
    for item in demo_manifest(n_train=n_train, n_val=n_val, n_predict=n_predict):
        out += [os.path.join(directory, item.image), os.path.join(directory, item.labels)]
    return out


def demo_image(item: DemoItem, *, seed: int = 0, train_shape: Sequence[int] = (256, 256),
               predict_shape: Sequence[int] = (2048, 2048),
               spacing: Sequence[float] | None = None):
    """One demo image and its labels, as :func:`write_demo` writes them.

    Each image has its own seed, derived from ``seed``, its role and its
    index, so changing the number of images changes no other image.

    Returns
    -------
    image : ndarray of uint16
    labels : ndarray of uint16 or uint32
    """
    import numpy as np

    from .synth import synthetic_nuclei

    shape = predict_shape if item.role == "predict" else train_shape
    image_seed = int(np.random.SeedSequence([seed, ROLES.index(item.role),
                                             item.index]).generate_state(1)[0])
    return synthetic_nuclei(tuple(shape), spacing=tuple(spacing) if spacing else None,
                            seed=image_seed)


def write_demo(directory: str | os.PathLike, *, ndim: int = 2, seed: int = 0, n_train: int = 8,
               n_val: int = 2, n_predict: int = 1, train_shape: Sequence[int] = (256, 256),
               predict_shape: Sequence[int] = (2048, 2048),
               spacing: Sequence[float] | None = None, progress: bool = True) -> list[str]:
    """Generate the demo and write it as TIFF files.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write into.
    ndim : {2, 3}
        Images or stacks.
    seed : int
        Base seed.
    n_train, n_val, n_predict : int
        Number of images per role.
    train_shape, predict_shape : sequence of int
        Shapes of training/validation and of prediction images.
    spacing : sequence of float, optional
        Pixel size in micrometres (one per axis), written into the TIFFs.

    Returns
    -------
    list of str
        The written files.
    """
    from ..core.progress import bar
    from ..io.images import write_tiff

    for name, shape in (("train_shape", train_shape), ("predict_shape", predict_shape)):
        if len(shape) != ndim:
            raise ValueError(f"{name} {tuple(shape)} does not have {ndim} dimensions")
    if spacing is not None and len(spacing) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not have {ndim} values")
    directory = os.fspath(directory)
    axes = "yx" if ndim == 2 else "zyx"
    items = demo_manifest(n_train=n_train, n_val=n_val, n_predict=n_predict)
    written = []
    for item in bar(items, desc="demo data", unit="image", disable=not progress):
        image, labels = demo_image(item, seed=seed, train_shape=train_shape,
                                   predict_shape=predict_shape, spacing=spacing)
        for rel, data in ((item.image, image), (item.labels, labels)):
            path = os.path.join(directory, rel)
            write_tiff(path, data, axes=axes, spacing=spacing)
            written.append(path)
        log.info("%s: %s, %d objects", item.name, "x".join(map(str, image.shape)),
                 int(labels.max()))
    return written
