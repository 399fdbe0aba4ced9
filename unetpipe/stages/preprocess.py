"""Preprocessing: percentile normalisation to float32, chunked OME-Zarr.

The statistics come from a bounded subsample of the image (at most 64
randomly chosen chunks, thinned to at most ``sample_size`` pixels per
channel), so a stack of many chunks is read in full only once, for the
output; an image of 64 chunks or fewer is read twice. It is never held whole.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..io import ngff
from ..io.images import (
    LazyImage,
    atomic_output,
    check_label_block,
    default_chunks,
    label_dtype,
    read_image,
    read_labels,
    write_label_image,
    write_multiscale,
)
from ..io.outputs import check_free_space

log = logging.getLogger(__name__)

MAX_SAMPLE_CHUNKS = 64


def percentile_normalize(image, low, high, *, clip: bool = False, eps: float = 1e-20):
    """Map ``low`` to 0 and ``high`` to 1, as float32.

    Parameters
    ----------
    image : ndarray of shape (C, ...) or dask array
        The image, channel first.
    low, high : array_like of shape (C,)
        Per-channel values mapped to 0 and 1 (typically percentiles).
    clip : bool
        Clip the result to [0, 1].
    eps : float
        Guards against division by zero for a constant channel.

    Returns
    -------
    ndarray of float32, same shape as ``image``

    Examples
    --------
    >>> percentile_normalize(np.array([[0, 5, 10]]), [0], [10])
    array([[0. , 0.5, 1. ]], dtype=float32)
    """
    low = np.asarray(low, dtype=np.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    high = np.asarray(high, dtype=np.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    scale = np.float32(1.0) / np.maximum(high - low, np.float32(eps))
    out = (image.astype(np.float32) - low) * scale
    if clip:
        out = out.clip(0.0, 1.0)
    return out  # float32 already: image, low and scale all are


def subsample_blocks(data, *, sample_size: int, max_chunks: int = MAX_SAMPLE_CHUNKS,
                     seed: int = 0) -> np.ndarray:
    """Read a bounded, spread-out sample of pixels from a channel-first array.

    Parameters
    ----------
    data : dask.array.Array of shape (C, ...)
        Channel-first image; its chunks decide what is read together.
    sample_size : int
        Most pixels kept per channel.
    max_chunks : int
        Most chunks read; they are drawn without replacement, deterministically.
    seed : int
        Seed of the chunk draw.

    Returns
    -------
    ndarray of shape (C, K)
        ``K <= sample_size`` pixels per channel.
    """
    grid = data.numblocks[1:]
    n_blocks = math.prod(grid)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n_blocks, size=min(n_blocks, max_chunks), replace=False))
    per_block = max(1, sample_size // len(picks))
    samples = []
    for flat in picks:
        index = np.unravel_index(flat, grid)
        block = np.asarray(data.blocks[(slice(None), *index)].compute(scheduler="threads"))
        block = block.reshape(block.shape[0], -1)
        if block.shape[1] > per_block:
            step = block.shape[1] / per_block
            block = block[:, (np.arange(per_block) * step).astype(np.int64)]
        samples.append(block)
    return np.concatenate(samples, axis=1)


@dataclass(frozen=True)
class PreprocessResult:
    """What :func:`preprocess_image` wrote."""

    path: str
    shape: tuple[int, ...]
    axes: str
    spacing: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    seconds: float
    n_labels_max: int | None = None


def _check_finite(block, path):
    if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
        bad = "NaN" if np.isnan(block).any() else "Inf"
        raise InputError(path, f"the image contains {bad} values")
    return block


def _normalised_chunk(block, path, low, high, clip):
    return percentile_normalize(_check_finite(block, path), low, high, clip=clip)


def preprocess_image(image: LazyImage, out: str | os.PathLike, *,
                     labels: LazyImage | None = None,
                     spacing: Sequence[float] | None = None,
                     channels: Sequence[int] | None = None,
                     percentiles: Sequence[float] = (1.0, 99.8), clip: bool = False,
                     sample_size: int = 4_000_000, chunks: Sequence[int] | None = None,
                     pyramid_levels: int = 2, name: str | None = None,
                     ngff_version: str | None = None,
                     progress: bool = True) -> PreprocessResult:
    """Normalise an image and write it, with its labels, as OME-Zarr.

    Parameters
    ----------
    image : LazyImage
        The input, as returned by :func:`unetpipe.io.images.read_image`.
    out : str or os.PathLike
        Destination ``.ome.zarr`` store; written atomically.
    labels : LazyImage, optional
        Instance labels of the same spatial shape; stored as the NGFF
        image-label ``labels/gt``, as unsigned integers.
    spacing : sequence of float, optional
        Pixel size per spatial axis, overriding the file's metadata.
    channels : sequence of int, optional
        Channels to keep; all by default.
    percentiles : (float, float)
        Low and high percentile, per channel, mapped to 0 and 1.
    clip : bool
        Clip normalised values to [0, 1].
    sample_size : int
        Most pixels per channel for the percentile estimate.
    chunks : sequence of int, optional
        Spatial chunk shape; :func:`unetpipe.io.images.default_chunks` by default.
    pyramid_levels : int
        Downsampled levels to add for viewing.
    name : str, optional
        Name recorded in the multiscales metadata.
    ngff_version : str, optional
        ``"0.4"`` or ``"0.5"`` (:mod:`unetpipe.io.ngff`; its default when None).
    progress : bool
        Show a progress bar.

    Returns
    -------
    PreprocessResult

    Raises
    ------
    InputError
        NaN/Inf in the image; labels of another shape, negative, non-integer
        or without any object; a spacing or channel selection that does not
        fit the image. Nothing is left at ``out`` then.
    """
    import dask.array as da

    start = time.perf_counter()
    path = image.path
    data, axes = image.data, image.axes
    if "c" not in axes:
        data, axes = data[None], "c" + axes
    spatial = axes[1:]
    if spacing is not None:
        if len(spacing) != len(spatial):
            raise InputError(path, f"data.spacing {list(spacing)} has {len(spacing)} values "
                                   f"but the image has {len(spatial)} spatial axes ({spatial})")
        spacing_t = tuple(float(s) for s in spacing)
        unit = "micrometer"
    else:
        spacing_t, unit = image.spacing, image.unit
    # the image's position: the same first pixel, in the unit of the spacing used
    origin = tuple(o / s * t for o, s, t in zip(image.origin, image.spacing, spacing_t,
                                                 strict=True))
    names = [f"channel {c}" for c in (channels if channels is not None
                                       else range(data.shape[0]))]
    if channels is not None:
        n = data.shape[0]
        bad = [c for c in channels if c >= n]
        if bad:
            raise InputError(path, f"data.channels asks for channel(s) {bad} but the image has "
                                   f"{n} channel(s)")
        data = data[list(channels)]
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(path, f"unsupported pixel type {data.dtype}")
    spatial_shape = tuple(data.shape[1:])

    if labels is not None and tuple(labels.spatial_shape) != spatial_shape:
        raise InputError(labels.path, f"labels have shape {tuple(labels.spatial_shape)} but "
                                      f"the image {path} has spatial shape {spatial_shape}")

    chunks = tuple(chunks) if chunks else default_chunks(spatial_shape)
    if len(chunks) != len(spatial_shape):
        raise InputError(path, f"preprocess.chunks {list(chunks)} has {len(chunks)} values but "
                               f"the image has {len(spatial_shape)} spatial axes")

    # float32 image (with its pyramid) and the labels, if any
    check_free_space(out, data.shape[0] * math.prod(spatial_shape) * 4 * 4 / 3
                     + (math.prod(spatial_shape) * 4 if labels is not None else 0),
                     what=f"the preprocessed {path} ({data.shape[0]} x "
                          f"{'x'.join(map(str, spatial_shape))} float32)")
    sample = subsample_blocks(data, sample_size=sample_size).astype(np.float64)
    if not np.isfinite(sample).all():
        raise InputError(path, "the image contains NaN or Inf values")
    low = np.percentile(sample, percentiles[0], axis=1)
    high = np.percentile(sample, percentiles[1], axis=1)
    for c in np.flatnonzero(high <= low):
        top = float(sample[c].max())
        if top > low[c]:
            # Sparse: fewer bright pixels than the high percentile can see.
            log.warning("%s: channel %d has its %g and %g percentiles equal (%g); using its "
                        "maximum (%g) as the high value", path, int(c), float(percentiles[0]),
                        float(percentiles[1]), float(low[c]), top)
            high[c] = top
        else:
            # A blank channel: shift it to 0 instead of dividing by ~0.
            log.warning("%s: channel %d is constant (%g) in the sampled pixels", path, int(c),
                        float(low[c]))
            high[c] = low[c] + 1.0

    normalise = functools.partial(_normalised_chunk, path=path, low=low, high=high, clip=clip)
    attrs = {
        "source": os.path.abspath(path),
        "source_axes": image.axes,
        "percentiles": [float(p) for p in percentiles],
        "low": [float(v) for v in low],
        "high": [float(v) for v in high],
        "clip": bool(clip),
    }
    n_max = None
    with atomic_output(out) as tmp:
        root = ngff.new_group(tmp, ngff_version)
        write_multiscale(root, data, axes=axes, spacing=spacing_t, unit=unit,
                         chunks=chunks, levels=pyramid_levels, name=name, transform=normalise,
                         dtype=np.float32, progress="preprocess" if progress else None,
                         origin=origin, channel_names=names)
        if labels is not None:
            attrs["labels_source"] = os.path.abspath(labels.path)
            label_dtype_ = label_dtype(labels.data.dtype)
            check = functools.partial(check_label_block, path=labels.path, dtype=label_dtype_)
            write_label_image(root, "gt", labels.data, spacing=spacing_t, unit=unit,
                              chunks=chunks, levels=pyramid_levels, transform=check,
                              dtype=label_dtype_, origin=origin)
            # Checked on the written, compressed copy: cheaper than reading
            # the source a second time.
            n_max = int(da.from_zarr(root["labels/gt/0"]).max().compute())
            if n_max == 0:
                raise InputError(labels.path, "labels contain no object (all pixels are 0)")
        root.attrs["unetpipe"] = attrs
    return PreprocessResult(
        path=os.fspath(out), shape=tuple(data.shape), axes=axes, spacing=spacing_t,
        low=tuple(float(v) for v in low), high=tuple(float(v) for v in high),
        seconds=time.perf_counter() - start, n_labels_max=n_max,
    )


def preprocess_file(image_path: str | os.PathLike, out: str | os.PathLike, *,
                    labels_path: str | os.PathLike | None = None, axes: str | None = None,
                    **options) -> PreprocessResult:
    """Read an image (and labels) lazily and preprocess it; see :func:`preprocess_image`."""
    image = read_image(image_path, axes=axes)
    labels = read_labels(labels_path, axes=None) if labels_path is not None else None
    return preprocess_image(image, out, labels=labels, **options)
