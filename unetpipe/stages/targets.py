"""The targets stage: training targets and weight maps for a preprocessed image.

Reads the ground-truth labels (``labels/gt``) of a preprocessed OME-Zarr
store and writes a Zarr group with the arrays ``targets`` (uint8) and
``weights`` (float32), chunked like the image. The work is blockwise: each
block is computed from the labels around it (one or two pixels for the
targets, the border term's reach ``R`` for the weights, see
:mod:`unetpipe.weights`), so a training stack of any size is processed in
bounded memory and with the same result as on the whole image at once.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..io.images import LazyImage, atomic_output, read_image, read_labels, store
from ..io.outputs import check_free_space
from .weights import MODES, border_term, influence_radius, targets_for_mode, weights_from_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetsResult:
    """What :func:`write_targets` wrote."""

    path: str
    shape: tuple[int, ...]
    class_counts: tuple[int, ...]
    class_weights: tuple[float, ...]
    weight_max: float
    seconds: float


def _border_block(block, *, w0, sigma, spacing, threads):
    return border_term(block, w0=w0, sigma=sigma, spacing=spacing,
                       threads=threads).astype(np.float32)


def _weights_block(targets, border, *, class_weights):
    return (class_weights[targets] + border).astype(np.float32)


def lazy_targets(labels: LazyImage, *, mode: str = "two_class", w0: float = 10.0,
                 sigma: float = 5.0, class_balance: bool = True, threads: int | None = None):
    """Targets and weights of a label image as Dask arrays, with the class counts.

    Parameters
    ----------
    labels : LazyImage
        Instance labels (no channel axis); its spacing is used when it is
        calibrated, pixel units otherwise.
    mode, w0, sigma, class_balance
        See :func:`unetpipe.weights.separation_weight_map`; ``sigma`` is in
        the labels' physical unit (micrometres) when calibrated.
    threads : int, optional
        Threads inside one block's distance transforms, used when the image
        is a single block (several blocks run in Dask's threads instead).

    Returns
    -------
    targets : dask.array.Array of uint8
    weights : dask.array.Array of float32
    counts : ndarray of int64
        Pixels per class (computed now: the class balance needs them).
    class_weights : ndarray of float64
        The class balance applied.
    """
    import dask
    import dask.array as da

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    data = labels.data
    spacing = labels.spacing if labels.unit else None
    sp = np.asarray(spacing if spacing is not None else [1.0] * data.ndim)
    n_classes = 2 if mode == "two_class" else 3
    # the three-class boundary needs the targets of the neighbours: two pixels
    targets = data.map_overlap(targets_for_mode, depth=1 if mode == "two_class" else 2,
                               boundary="none", mode=mode, dtype=np.uint8)
    per_block = [dask.delayed(np.bincount)(b.ravel(), minlength=n_classes)
                 for b in targets.to_delayed().ravel()]
    counts = np.sum(dask.compute(*per_block), axis=0).astype(np.int64)[:n_classes]
    class_w = weights_from_counts(counts, class_balance=class_balance)
    # a pixel's border term depends on the labels within R (plus the gap's pixel)
    reach = influence_radius(sigma)
    depth = {i: min(math.ceil(reach / s) + 2, n) for i, (s, n) in
             enumerate(zip(sp, data.shape, strict=True))}
    if max(depth.values()) > 64:
        log.warning("targets.sigma = %g reaches %d pixels: the weight map will be slow and "
                    "memory-hungry; is sigma in the images' unit (%s)?", sigma,
                    max(depth.values()) - 2, labels.unit or "pixels")
    # blocks of at least four halos each, so the halos do not dominate the work
    blocks = data.rechunk({i: min(n, max(max(data.chunks[i]), 4 * depth[i]))
                           for i, n in enumerate(data.shape)})
    inner = threads if math.prod(blocks.numblocks) == 1 else 1
    border = blocks.map_overlap(_border_block, depth=depth, boundary="none", dtype=np.float32,
                                w0=w0, sigma=sigma, spacing=spacing, threads=inner)
    weights = da.map_blocks(_weights_block, targets, border.rechunk(targets.chunks),
                            class_weights=class_w, dtype=np.float32)
    return targets, weights, counts, class_w


def write_targets(store_path: str | os.PathLike, out: str | os.PathLike, *,
                  mode: str = "two_class", w0: float = 10.0, sigma: float = 5.0,
                  class_balance: bool = True, threads: int | None = None,
                  progress: bool = True) -> TargetsResult:
    """Write ``targets`` and ``weights`` for a preprocessed store's ground truth.

    Parameters
    ----------
    store_path : str or os.PathLike
        A store written by :func:`unetpipe.stages.preprocess.preprocess_image` with
        labels (``labels/gt``).
    out : str or os.PathLike
        Destination Zarr group, e.g. ``results/targets/NAME.zarr``; written
        atomically.
    mode, w0, sigma, class_balance, threads
        See :func:`lazy_targets`.
    progress : bool
        Show progress bars.

    Returns
    -------
    TargetsResult

    Raises
    ------
    InputError
        The store has no ground-truth labels.
    """
    import dask.array as da
    import zarr

    start = time.perf_counter()
    store_path = os.fspath(store_path)
    gt_path = os.path.join(store_path, "labels", "gt")
    if not os.path.isdir(gt_path):
        raise InputError(store_path, "has no ground-truth labels (labels/gt); targets need "
                                     "the instance labels of a training image")
    labels = read_labels(gt_path)
    if not np.issubdtype(labels.data.dtype, np.integer):
        raise InputError(gt_path, f"labels must be integers, not {labels.data.dtype}")
    image = read_image(store_path)
    chunks = tuple(max(c) for c in image.data.chunks[1:])  # spatial chunks of the image
    targets, weights, counts, class_w = lazy_targets(
        labels, mode=mode, w0=w0, sigma=sigma, class_balance=class_balance, threads=threads)
    axes = list(labels.axes)
    # uint8 targets and float32 weights
    check_free_space(out, 5 * math.prod(labels.spatial_shape),
                     what=f"the targets of {store_path} "
                          f"({'x'.join(map(str, labels.spatial_shape))})")
    with atomic_output(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        t_arr = root.create_array("targets", shape=targets.shape, chunks=chunks, dtype=np.uint8,
                                  fill_value=0, dimension_names=axes)
        w_arr = root.create_array("weights", shape=weights.shape, chunks=chunks,
                                  dtype=np.float32, fill_value=0, dimension_names=axes)
        store(targets, t_arr)
        store(weights, w_arr, progress="targets" if progress else None)
        weight_max = float(da.from_zarr(w_arr).max().compute())  # chunk by chunk
        root.attrs["unetpipe"] = {
            "source": os.path.abspath(store_path),
            "mode": mode,
            "classes": ["background", "cell"] if mode == "two_class"
            else ["background", "interior", "boundary"],
            "w0": float(w0),
            "sigma": float(sigma),
            "spacing": list(labels.spacing),
            "unit": labels.unit,
            "class_balance": bool(class_balance),
            "class_counts": [int(c) for c in counts],
            "class_weights": [float(c) for c in class_w],
        }
    return TargetsResult(path=os.fspath(out), shape=tuple(targets.shape),
                         class_counts=tuple(int(c) for c in counts),
                         class_weights=tuple(float(c) for c in class_w),
                         weight_max=weight_max, seconds=time.perf_counter() - start)
