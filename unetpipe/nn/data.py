"""Training data: random patches of preprocessed images with their targets.

A training sample is a preprocessed store (``results/preprocessed/NAME.ome.zarr``,
image at level ``0``, channel first) and its targets store
(``results/targets/NAME.zarr``, arrays ``targets`` and ``weights``). Patches
are read straight from the Zarr arrays, so a stack is never loaded whole;
only a coarse map of where the foreground is (one count per cell of 16
pixels per axis) is kept in memory, to bias the sampling towards cells.

Batches are reproducible from the seed and the batch index alone (each batch
draws from its own generator), so a resumed training run reads exactly the
batches the interrupted run would have read.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError

# Side of the coarse cells of the foreground map, in pixels per axis.
FOREGROUND_CELL = 16


@dataclass
class TrainingSample:
    """One training image with its targets, opened lazily.

    Attributes
    ----------
    name : str
        Sample name.
    image : zarr.Array of shape (C, *S), float32
        Level 0 of the preprocessed store.
    targets : zarr.Array of shape S, uint8
        Class ids (0 = background).
    weights : zarr.Array of shape S, float32
        The separation weight map.
    spacing : tuple of float
        Pixel size per spatial axis.
    mode : str
        Target mode of the targets store (``two_class`` or ``three_class``).
    cells : ndarray of int64, shape (M, ndim)
        Origins of the coarse cells that hold foreground.
    cell_sizes : ndarray of int64, shape (M, ndim)
        Their extents (cells at chunk and image ends are smaller).
    cell_counts : ndarray of int64, shape (M,)
        Foreground pixels in each of those cells.
    """

    name: str
    image: object
    targets: object
    weights: object
    spacing: tuple[float, ...]
    mode: str
    cells: np.ndarray
    cell_sizes: np.ndarray
    cell_counts: np.ndarray
    attrs: dict

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.targets.shape)

    @property
    def channels(self) -> int:
        return int(self.image.shape[0])


def _foreground_cells(targets, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origins, extents and foreground pixel counts of the coarse cells that
    hold foreground, read chunk by chunk."""
    shape = targets.shape
    ndim = len(shape)
    chunks = targets.chunks
    # cells must tile every chunk so that a cell never spans two chunks
    cell_shape = tuple(min(cell, c) for c in chunks)
    origins, sizes, counts = [], [], []
    grid = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
    for start in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, ndim):
        sl = tuple(slice(int(o), min(int(o) + c, s))
                   for o, c, s in zip(start, chunks, shape, strict=True))
        block = np.asarray(targets[sl]) > 0
        if not block.any():
            continue
        pad = [(0, (-n) % k) for n, k in zip(block.shape, cell_shape, strict=True)]
        block = np.pad(block, pad)
        split = []
        for n, k in zip(block.shape, cell_shape, strict=True):
            split.extend([n // k, k])
        summed = block.reshape(split).sum(axis=tuple(range(1, 2 * ndim, 2)))
        idx = np.argwhere(summed > 0)
        lo = start + idx * np.array(cell_shape)
        stop = np.array([s.stop for s in sl])
        origins.append(lo)
        sizes.append(np.minimum(lo + np.array(cell_shape), stop) - lo)
        counts.append(summed[tuple(idx.T)])
    if not origins:
        return np.zeros((0, ndim), np.int64), np.zeros((0, ndim), np.int64), np.zeros(0, np.int64)
    return (np.concatenate(origins).astype(np.int64), np.concatenate(sizes).astype(np.int64),
            np.concatenate(counts).astype(np.int64))


class Region:
    """A read-only view of a box of an array's last axes (the part of a training
    image that trains when a slab of it is held out for validation).

    Indexing takes one slice per axis (leading axes whole), as the sampler reads.
    """

    def __init__(self, array, box: Sequence[Sequence[int]], *, lead: int = 0):
        self.array, self.lead = array, int(lead)
        self.box = tuple((int(a), int(b)) for a, b in box)
        self.shape = tuple(array.shape[:lead]) + tuple(b - a for a, b in self.box)
        self.chunks = tuple(array.chunks)
        self.ndim, self.dtype = len(self.shape), array.dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        out = list(key[:self.lead])
        for s, (a, b) in zip(key[self.lead:], self.box, strict=True):
            start, stop, _ = s.indices(b - a)
            out.append(slice(a + start, a + stop))
        return self.array[tuple(out)]


def open_training_sample(store_path: str | os.PathLike, targets_path: str | os.PathLike, *,
                         name: str | None = None,
                         region: Sequence[Sequence[int]] | None = None) -> TrainingSample:
    """Open a preprocessed store and its targets for patch sampling.

    ``region`` (``(start, stop)`` per spatial axis) trains on that box alone.

    Raises
    ------
    InputError
        A store is missing or its arrays do not fit together.
    """
    import zarr

    store_path, targets_path = os.fspath(store_path), os.fspath(targets_path)
    try:
        image = zarr.open_array(os.path.join(store_path, "0"), mode="r")
    except Exception as e:  # zarr raises several kinds for a missing or broken store
        raise InputError(store_path, f"cannot open the preprocessed image (level 0): {e}") from e
    try:
        group = zarr.open_group(targets_path, mode="r")
        targets, weights = group["targets"], group["weights"]
    except Exception as e:
        raise InputError(targets_path, f"cannot open the targets and weights: {e}") from e
    attrs = dict(group.attrs.get("unetpipe", {}))
    if image.ndim != targets.ndim + 1 or tuple(image.shape[1:]) != tuple(targets.shape):
        raise InputError(targets_path, f"targets of shape {tuple(targets.shape)} do not fit the "
                                       f"image {store_path} of shape {tuple(image.shape)} "
                                       "(channel first)")
    if tuple(weights.shape) != tuple(targets.shape):
        raise InputError(targets_path, f"weights of shape {tuple(weights.shape)} differ from the "
                                       f"targets' {tuple(targets.shape)}")
    mode = attrs.get("mode")
    if mode not in ("two_class", "three_class"):
        raise InputError(targets_path, f"unknown target mode {mode!r} in its attributes")
    spacing = tuple(float(s) for s in attrs.get("spacing", [1.0] * targets.ndim))
    if region is not None:
        image = Region(image, region, lead=1)
        targets, weights = Region(targets, region), Region(weights, region)
    cells, sizes, counts = _foreground_cells(targets, FOREGROUND_CELL)
    if name is None:
        from ..inputs.samples import sample_name

        name = sample_name(store_path)
    return TrainingSample(name=name, image=image, targets=targets, weights=weights,
                          spacing=spacing, mode=mode, cells=cells, cell_sizes=sizes, cell_counts=counts,
                          attrs=attrs)


def _read_padded(array, origin: Sequence[int], size: Sequence[int], *, lead: int = 0):
    """Read ``array[..., origin:origin+size]``, reflecting where the patch is
    larger than the image (origin is then 0 on that axis)."""
    shape = array.shape[lead:]
    sl = tuple(slice(o, min(o + p, s)) for o, p, s in zip(origin, size, shape, strict=True))
    block = np.asarray(array[(slice(None),) * lead + sl])
    pad = [(0, p - (s.stop - s.start)) for p, s in zip(size, sl, strict=True)]
    if any(after for _, after in pad):
        block = np.pad(block, [(0, 0)] * lead + pad, mode="symmetric")
    return block


class PatchSampler:
    """Random training patches, foreground-biased, reproducible per batch.

    Parameters
    ----------
    samples : sequence of TrainingSample
        The training images; all with the same channel count and target mode.
    patch_shape : sequence of int
        Spatial patch shape; an image smaller than the patch along an axis is
        mirrored to fill it.
    foreground : float
        Fraction of patches centred on a foreground pixel; the others are
        placed uniformly at random. Images are drawn in proportion to their
        pixel counts.
    seed : int
        Base seed; batch ``i`` depends only on ``(seed, i)``.
    """

    def __init__(self, samples: Sequence[TrainingSample], *, patch_shape: Sequence[int],
                 foreground: float = 0.5, seed: int = 0):
        if not samples:
            raise ValueError("no training samples")
        ndims = {len(s.shape) for s in samples}
        if len(ndims) != 1:
            raise ValueError(f"training images mix dimensionalities: "
                             f"{[(s.name, s.shape) for s in samples]}")
        if len(patch_shape) != ndims.pop():
            raise ValueError(f"patch shape {tuple(patch_shape)} does not match the images' "
                             f"dimensionality ({samples[0].name}: {samples[0].shape})")
        if not 0 <= foreground <= 1:
            raise ValueError(f"foreground must be in [0, 1], got {foreground}")
        self.samples = list(samples)
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.foreground = float(foreground)
        self.seed = int(seed)
        sizes = np.array([np.prod(s.shape, dtype=np.float64) for s in samples])
        self._p_image = sizes / sizes.sum()
        fg = np.array([s.cell_counts.sum() for s in samples], dtype=np.float64)
        self._p_fg_image = fg / fg.sum() if fg.sum() else None

    def _origin(self, sample: TrainingSample, rng: np.random.Generator, *, biased: bool):
        shape, patch = np.array(sample.shape), np.array(self.patch_shape)
        high = np.maximum(shape - patch, 0)
        if biased and sample.cell_counts.size:
            k = rng.choice(sample.cell_counts.size, p=sample.cell_counts / sample.cell_counts.sum())
            cell = sample.cell_sizes[k]
            centre = sample.cells[k] + (rng.random(len(shape)) * cell).astype(np.int64)
            # the foreground pixel lands anywhere in the central half of the patch
            jitter = ((rng.random(len(shape)) - 0.5) * patch / 2).astype(np.int64)
            return np.clip(centre - patch // 2 + jitter, 0, high)
        return (rng.random(len(shape)) * (high + 1)).astype(np.int64)

    def patch(self, rng: np.random.Generator):
        """One random patch: image (C, *P) float32, targets P uint8, weights P float32."""
        biased = rng.random() < self.foreground and self._p_fg_image is not None
        p = self._p_fg_image if biased else self._p_image
        sample = self.samples[rng.choice(len(self.samples), p=p)]
        origin = self._origin(sample, rng, biased=biased).tolist()
        image = _read_padded(sample.image, origin, self.patch_shape, lead=1)
        targets = _read_padded(sample.targets, origin, self.patch_shape)
        weights = _read_padded(sample.weights, origin, self.patch_shape)
        return image.astype(np.float32, copy=False), targets, weights.astype(np.float32)

    def batch(self, index: int, batch_size: int):
        """Batch ``index``: image (B, C, *P), targets (B, *P), weights (B, *P)."""
        rng = np.random.default_rng([self.seed, int(index)])
        parts = [self.patch(rng) for _ in range(batch_size)]
        return tuple(np.stack(p) for p in zip(*parts, strict=True))


class Prefetcher:
    """Reads batches ``start, start + 1, ...`` in a background thread.

    Zarr decompression and NumPy release the GIL, so reading overlaps the
    training step. Iterate to get ``(index, batch)``; call :meth:`close` when
    done (or use as a context manager).
    """

    def __init__(self, sampler: PatchSampler, *, batch_size: int, start: int = 0,
                 depth: int = 3):
        self._sampler = sampler
        self._batch_size = batch_size
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._next = start
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True,
                                        name="unetpipe-prefetch")
        self._thread.start()

    def _run(self, index: int) -> None:
        while not self._stop.is_set():
            try:
                item = (index, self._sampler.batch(index, self._batch_size), None)
            except BaseException as e:  # handed to the consumer, raised there
                item = (index, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            index += 1

    def __iter__(self):
        return self

    def __next__(self):
        index, batch, error = self._queue.get()
        if error is not None:
            raise error
        return index, batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
