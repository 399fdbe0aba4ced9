"""Instance labels from class probabilities, block by block, stitched across blocks.

The network predicts per pixel background and cell (``two_class``: the
gaps between touching cells are background) or background, cell interior and
cell boundary (``three_class``). Two methods turn that into objects:

``components``
    Threshold the cell (interior) class, take connected components, then
    grow every component back by the separation ring the training targets
    removed (one pixel for two classes, two for three: the boundary and the
    gap), but only into the predicted foreground, each pixel going to the
    nearest component.
``watershed``
    Seeds from the cell (interior) class, or from the maxima of the
    foreground's distance transform that stand at least ``h`` above their
    surroundings; a watershed of the inverted cell probability (or of the
    inverted distance) floods the foreground from them.

Then objects outside ``[min_size, max_size]`` (physical area or volume) are
removed and holes in objects are filled.

:func:`segment_array` does this for an array in memory. :func:`segment_store`
does the same for a probability store of any size, block by block:

1. every block is segmented from a window of the block plus a halo; its
   objects get block-local ids, with the block's count recorded;
2. block offsets (a running sum of the counts, one number per block) make
   the ids global; neighbouring blocks (across faces, edges and corners)
   compare their views of the halo regions they share, and objects seen as
   the same by both are merged (union-find over these pairs only);
3. a relabelling table, one chunk per block, maps every block's ids to
   consecutive final ids (objects outside the size range to 0);
4. each block is relabelled through the tables of the blocks around it,
   holes are filled with a halo, and the block is written.

Memory depends on the block (and the number of objects that cross block
faces), not on the image. Every pass records the blocks it finished, so a
killed run resumes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .memory import release_free_memory
from .resume import (
    DONE_DIR,
    finish,
    input_signature,
    mark_done,
    markers,
    partial_path,
    resume_state,
)

log = logging.getLogger("unetpipe")

METHODS = ("components", "watershed")
SEEDS = ("classes", "distance")
DEFAULT_BLOCK = {2: (1024, 1024), 3: (64, 192, 192)}
DEFAULT_HALO = {"components": 16, "watershed": 32}
WORK_DIR = "_work"
UINT32_MAX = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class SegmentParams:
    """Settings of one segmentation (see :func:`segment_array`).

    The defaults are those of the config schema: the settings that scored
    best on the built-in demo (README, "Segmentation").
    """

    method: str = "watershed"
    threshold: float = 0.6
    foreground: float = 0.4
    grow: int | None = None
    seeds: str = "classes"
    h: float = 2.0
    min_size: float = 20.0
    max_size: float | None = None
    fill_holes: float | None = None

    def check(self, prefix: str = "segment") -> SegmentParams:
        """Raise ConfigError naming the key of a bad value."""
        def bad(key, value, why):
            raise ConfigError(f"config key '{prefix}.{key}': {value!r} {why}")

        if self.method not in METHODS:
            bad("method", self.method, f"is not one of {', '.join(METHODS)}")
        if self.seeds not in SEEDS:
            bad("seeds", self.seeds, f"is not one of {', '.join(SEEDS)}")
        for key in ("threshold", "foreground"):
            value = getattr(self, key)
            if not 0 < value < 1:
                bad(key, value, "must lie between 0 and 1")
        if self.grow is not None and self.grow < 0:
            bad("grow", self.grow, "must not be negative")
        if self.h <= 0:
            bad("h", self.h, "must be positive")
        if self.min_size < 0:
            bad("min_size", self.min_size, "must not be negative")
        if self.max_size is not None and self.max_size < self.min_size:
            bad("max_size", self.max_size, f"is below min_size ({self.min_size})")
        if self.fill_holes is not None and self.fill_holes < 0:
            bad("fill_holes", self.fill_holes, "must not be negative")
        return self

    @property
    def merge(self) -> str:
        """How blocks are stitched: by shared seed pixels ("markers", exact when
        seeds depend on each pixel alone), or by the overlap of whole objects."""
        return "overlap" if self.method == "watershed" and self.seeds == "distance" \
            else "markers"


def mode_of(n_classes: int) -> str:
    """The target mode of probabilities with ``n_classes`` channels."""
    modes = {2: "two_class", 3: "three_class"}
    if n_classes not in modes:
        raise ValueError(f"probabilities need 2 (background, cell) or 3 (background, "
                         f"interior, boundary) class channels, got {n_classes}")
    return modes[n_classes]


def default_grow(n_classes: int) -> int:
    """Pixels the separation targets took off each cell: the gap (two classes),
    plus the boundary (three classes)."""
    return 1 if mode_of(n_classes) == "two_class" else 2


# --- one window -----------------------------------------------------------------------------


def _face(ndim: int):
    from scipy import ndimage as ndi

    return ndi.generate_binary_structure(ndim, 1)


def _close_gaps(mask: np.ndarray) -> np.ndarray:
    """Binary closing by the face neighbourhood (a ball of one pixel): fills
    the gaps of up to two pixels the separation targets leave between
    touching cells. Outside the array counts as background."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask
    face = _face(mask.ndim)
    padded = np.pad(mask, 1)
    closed = ndi.binary_erosion(ndi.binary_dilation(padded, structure=face), structure=face)
    return closed[(slice(1, -1),) * mask.ndim]


def _grow(markers: np.ndarray, distance: float, mask: np.ndarray) -> np.ndarray:
    """Every unlabelled pixel of ``mask`` within ``distance`` pixels of a label
    takes the nearest label."""
    from scipy import ndimage as ndi

    if distance <= 0 or not markers.any() or markers.all():
        return markers
    d, index = ndi.distance_transform_edt(markers == 0, return_indices=True)
    grown = markers[tuple(index)]
    del index
    return np.where((markers == 0) & (d <= distance) & mask, grown, markers)


def segment_window(probabilities, *, params: SegmentParams = SegmentParams(),
                   spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Instances of one window, before the size filter and hole filling.

    Parameters
    ----------
    probabilities : ndarray of shape (K, *S)
        Class probabilities, K = 2 (background, cell) or 3 (background,
        interior, boundary).
    params : SegmentParams
    spacing : sequence of float, optional
        Pixel size per spatial axis (distance seeds are in these units).

    Returns
    -------
    labels : ndarray of int32, shape S
        Object ids 1..n, 0 = background.
    seeds : ndarray of bool, shape S
        The seed pixels (the objects' identities are decided there).
    """

    probs = np.asarray(probabilities, dtype=np.float32)
    return _segment(probs[0] <= 1.0 - params.foreground, probs[1], n_classes=probs.shape[0],
                    params=params, spacing=spacing)


def _segment(foreground: np.ndarray, cell: np.ndarray, *, n_classes: int,
             params: SegmentParams, spacing) -> tuple[np.ndarray, np.ndarray]:
    """:func:`segment_window` from the raw foreground (1 - P(background) at
    least the threshold) and the cell (interior) probability."""
    from scipy import ndimage as ndi

    ndim = cell.ndim
    grow = default_grow(n_classes) if params.grow is None else params.grow
    # the targets made the one-pixel ring where cells touch background: the
    # foreground is closed over such gaps
    foreground = _close_gaps(foreground)
    face = _face(ndim)
    if params.method == "components" or params.seeds == "classes":
        seeds = cell >= params.threshold
        markers, _ = ndi.label(seeds, structure=face)
        foreground |= seeds
        if params.method == "components":
            return _grow(markers, grow, foreground).astype(np.int32, copy=False), seeds
        elevation = 1.0 - cell
        del cell
    else:
        from skimage.morphology import h_maxima

        sampling = None if spacing is None else tuple(float(s) for s in spacing)
        distance = ndi.distance_transform_edt(foreground, sampling=sampling)
        seeds = h_maxima(distance, params.h).astype(bool) & foreground
        markers, _ = ndi.label(seeds, structure=np.ones((3,) * ndim, bool))
        elevation = -distance
    from skimage.segmentation import watershed

    labels = watershed(elevation, markers, mask=foreground, connectivity=1)
    return labels.astype(np.int32, copy=False), seeds


def fill_holes(labels, *, max_size: float | None = None,
               max_extent: Sequence[int] | None = None) -> np.ndarray:
    """Fill the holes of every object.

    A hole is a connected part of the background (any connectivity) that
    does not touch the array's border and whose face neighbours all belong
    to one object; it takes that object's id.

    Parameters
    ----------
    labels : ndarray of int, shape (M, N) or (P, M, N)
    max_size : float, optional
        Largest hole filled, in pixels (default: any).
    max_extent : sequence of int, optional
        Largest hole filled, as its bounding box's size per axis (the
        chunked version's halo bounds it).

    Returns
    -------
    ndarray, same shape and dtype
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    background = labels == 0
    if not background.any() or background.all():
        return labels.copy()
    comp, n = ndi.label(background, structure=np.ones((3,) * labels.ndim, bool))
    sizes = np.bincount(comp.ravel())
    candidate = np.ones(n + 1, bool)
    candidate[0] = False
    if max_size is not None:
        candidate &= sizes <= max_size
    for axis in range(labels.ndim):  # touching the border: not a hole
        for edge in (0, -1):
            candidate[np.unique(np.take(comp, edge, axis=axis))] = False
    out = labels.copy()
    if not candidate.any():
        return out
    face = _face(labels.ndim)
    boxes = ndi.find_objects(comp)
    for c in np.flatnonzero(candidate):
        box = boxes[c - 1]
        if max_extent is not None and any(s.stop - s.start > e for s, e in
                                          zip(box, max_extent, strict=True)):
            continue
        box = tuple(slice(s.start - 1, s.stop + 1) for s in box)  # inside: not at the border
        hole = comp[box] == c
        ring = ndi.binary_dilation(hole, structure=face) & ~hole
        around = np.unique(labels[box][ring])
        if around.size == 1 and around[0] != 0:
            out[box][hole] = around[0]
    return out


def _size_range(params: SegmentParams, spacing) -> tuple[float, float]:
    """The size range in pixels."""
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    low = params.min_size / voxel
    high = math.inf if params.max_size is None else params.max_size / voxel
    return low, high


def _hole_pixels(params: SegmentParams, spacing) -> float | None:
    if not params.fill_holes:
        return None
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    return params.fill_holes / voxel


def default_halo(params: SegmentParams, ndim: int) -> tuple[int, ...]:
    return (DEFAULT_HALO[params.method],) * ndim


def min_halo(params: SegmentParams, n_classes: int) -> int:
    """The least halo with which blocks see everything that decides their core:
    the gap closing (2 pixels) and the growth, plus one."""
    grow = default_grow(n_classes) if params.grow is None else params.grow
    return max(2, grow if params.method == "components" else 0) + 1


def segment_array(probabilities, *, params: SegmentParams = SegmentParams(),
                  spacing: Sequence[float] | None = None,
                  halo: Sequence[int] | None = None) -> np.ndarray:
    """Instance labels of a probability array in memory (the whole-image version).

    Parameters
    ----------
    probabilities : ndarray of shape (K, *S)
        Class probabilities, K = 2 or 3; see :func:`segment_window`.
    params : SegmentParams
        Method and settings; ``min_size``, ``max_size`` and ``fill_holes``
        are areas (2D) or volumes (3D) in the units of ``spacing``.
    spacing : sequence of float, optional
        Pixel size per spatial axis (default 1).
    halo : sequence of int, optional
        The halo :func:`segment_store` would use: holes as wide as it or
        wider along an axis are left open, as there. Default
        :data:`DEFAULT_HALO`.

    Returns
    -------
    ndarray of uint32, shape S
        Consecutive object ids 1..n, 0 = background.

    Examples
    --------
    >>> p = np.zeros((2, 1, 7), np.float32)
    >>> p[1, 0, [0, 1, 2, 5, 6]] = 0.9
    >>> p[0] = 1 - p[1]
    >>> segment_array(p, params=SegmentParams(min_size=0))
    array([[1, 1, 1, 0, 0, 2, 2]], dtype=uint32)
    """
    from skimage.segmentation import relabel_sequential

    params.check()
    probs = np.asarray(probabilities)
    ndim = probs.ndim - 1
    halo = default_halo(params, ndim) if halo is None else tuple(halo)
    labels, _ = segment_window(probs, params=params, spacing=spacing)
    low, high = _size_range(params, spacing)
    sizes = np.bincount(labels.ravel())
    drop = (sizes < low) | (sizes > high)
    drop[0] = False
    labels[drop[labels]] = 0
    hole = _hole_pixels(params, spacing)
    if hole:
        labels = fill_holes(labels, max_size=hole, max_extent=[h - 1 for h in halo])
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint32)


# --- chunked ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentResult:
    """What :func:`segment_store` did."""

    output: str
    shape: tuple[int, ...]
    objects: int
    pieces: int
    merges: int
    removed: int
    blocks: int
    resumed: int
    block: tuple[int, ...]
    halo: tuple[int, ...]
    dtype: str
    seconds: float

    @property
    def voxels_per_second(self) -> float:
        return math.prod(self.shape) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Job:
    probabilities: str
    output: str  # the partial store
    shape: tuple[int, ...]
    block: tuple[int, ...]
    halo: tuple[int, ...]
    grid: tuple[int, ...]
    spacing: tuple[float, ...]
    params: SegmentParams
    n_classes: int

    @property
    def window_max(self) -> tuple[int, ...]:
        return tuple(min(n, b + 2 * h) for n, b, h in
                     zip(self.shape, self.block, self.halo, strict=True))

    def flat(self, index) -> int:
        return int(np.ravel_multi_index(index, self.grid))

    def core(self, index) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in
                     zip(index, self.block, self.shape, strict=True))

    def window(self, index, halo=None) -> tuple[slice, ...]:
        halo = self.halo if halo is None else halo
        return tuple(slice(max(0, c.start - h), min(n, c.stop + h)) for c, h, n in
                     zip(self.core(index), halo, self.shape, strict=True))

    def work(self, *names) -> str:
        return os.path.join(self.output, WORK_DIR, *names)


def _intersect(a, b):
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in
                zip(a, b, strict=True))
    return out if all(s.stop > s.start for s in out) else None


def _shift(box, origin):
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in
                 zip(box, origin, strict=True))


_ARRAYS: dict = {}
_ARRAYS_LOCK = threading.Lock()


def _open(path: str, mode: str = "r"):
    """A Zarr array, opened once per process and path."""
    import zarr

    with _ARRAYS_LOCK:
        arr = _ARRAYS.get((path, mode))
        if arr is None:
            arr = _ARRAYS[(path, mode)] = zarr.open_array(path, mode=mode)
    return arr


def _read_probabilities(job: _Job, box, channels=slice(None)) -> np.ndarray:
    arr = _open(os.path.join(job.probabilities, "0"))
    try:
        return np.asarray(arr[(channels, *box)], dtype=np.float32)
    except Exception as e:
        raise InputError(job.probabilities, f"cannot read pixel data ({type(e).__name__}: "
                                            f"{e})") from e


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def _segment_blocks(job: _Job, indices) -> int:
    """Pass 1: segment blocks from their windows; store the core's ids, the
    halo's view and the objects' sizes. Returns the number of blocks."""
    pieces = _open(job.work("pieces"), "r+")
    halos = _open(job.work("halos"), "r+")
    for index in indices:
        core, window = job.core(index), job.window(index)
        # background and cell channels only; the background is needed only
        # as the foreground mask, so the window is held as one float plane
        probs = _read_probabilities(job, window, slice(0, 2))
        foreground = probs[0] <= 1.0 - job.params.foreground
        cell = probs[1].copy()
        del probs
        labels, seeds = _segment(foreground, cell, n_classes=job.n_classes, params=job.params,
                                 spacing=job.spacing)
        del foreground, cell
        inner = _shift(core, window)
        core_labels = labels[inner]
        ids = np.unique(core_labels)
        ids = ids[ids > 0]
        lut = np.zeros(int(labels.max()) + 1, np.uint32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
        local = lut[core_labels]
        pieces[core] = local
        view = lut[labels]
        del labels
        if job.params.merge == "markers":
            view[~seeds] = 0
        view[inner] = 0
        chunk = np.zeros(job.window_max, np.uint32)
        chunk[tuple(slice(0, s.stop - s.start) for s in window)] = view
        halos[(*index, *(slice(None),) * len(job.shape))] = chunk
        sizes = np.bincount(local.ravel(), minlength=ids.size + 1)[1:].astype(np.int64)
        _save_npy(job.work("sizes", f"{job.flat(index)}.npy"), sizes)
        mark_done(os.path.join(job.output, DONE_DIR), (1, *index))
        del seeds, view, local, chunk
        release_free_memory()
    return len(indices)


def _directions(reach: Sequence[int]):
    """Offsets of the blocks a window reaches (``reach`` blocks per axis), with
    the first non-zero component positive: each pair of blocks once."""
    for d in itertools.product(*[range(-r, r + 1) for r in reach]):
        nonzero = [v for v in d if v]
        if nonzero and nonzero[0] > 0:
            yield d


def _pair_counts(x: np.ndarray, y: np.ndarray):
    """Pixel counts of the (x, y) id pairs where both are non-zero."""
    both = (x > 0) & (y > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    pairs = np.stack([x[both].astype(np.int64), y[both].astype(np.int64)], axis=1)
    keys, counts = np.unique(pairs, axis=0, return_counts=True)
    return keys, counts


def _block_edges(job: _Job, indices, offsets) -> np.ndarray:
    """Pass 2: the merges between blocks and their neighbours after them, as
    pairs of global ids (int64, shape (E, 2))."""
    edges = [np.zeros((0, 2), np.int64)]
    for index in indices:
        edges.append(_edges_of(job, index, offsets))
    return np.concatenate(edges)


def _edges_of(job: _Job, index, offsets) -> np.ndarray:
    pieces = _open(job.work("pieces"))
    halos = _open(job.work("halos"))
    own_halo = None
    edges = []
    reach = [min(math.ceil(h / b), g - 1) for h, b, g in
             zip(job.halo, job.block, job.grid, strict=True)]
    for d in _directions(reach):
        other = tuple(i + v for i, v in zip(index, d, strict=True))
        if any(o < 0 or o >= g for o, g in zip(other, job.grid, strict=True)):
            continue
        if own_halo is None:
            own_halo = halos[(*index, *(slice(None),) * len(job.shape))]
        other_halo = halos[(*other, *(slice(None),) * len(job.shape))]
        a_win, b_win = job.window(index), job.window(other)
        a_core, b_core = job.core(index), job.core(other)
        # (A's view, B's view) on the two regions they share
        views = []
        r1 = _intersect(a_win, b_core)
        if r1 is not None:
            views.append((own_halo[_shift(r1, a_win)], pieces[r1]))
        r2 = _intersect(b_win, a_core)
        if r2 is not None:
            views.append((pieces[r2], other_halo[_shift(r2, b_win)]))
        if not views:
            continue
        a_view = np.concatenate([v[0].ravel() for v in views])
        b_view = np.concatenate([v[1].ravel() for v in views])
        keys, counts = _pair_counts(a_view, b_view)
        if keys.size == 0:
            continue
        if job.params.merge == "overlap":
            # the same object seen from both sides: the overlap holds at
            # least half of the smaller of the two views of it
            a_size = dict(zip(*np.unique(a_view[a_view > 0], return_counts=True), strict=True))
            b_size = dict(zip(*np.unique(b_view[b_view > 0], return_counts=True), strict=True))
            smaller = np.array([min(a_size[a], b_size[b]) for a, b in keys.tolist()])
            keys = keys[2 * counts >= smaller]
        a_off, b_off = offsets[job.flat(index)], offsets[job.flat(other)]
        edges.append(keys + np.array([a_off, b_off], np.int64))
    if not edges:
        return np.zeros((0, 2), np.int64)
    return np.concatenate(edges)


def _relabel_blocks(job: _Job, indices, dtype: str, fill: float | None) -> int:
    """Pass 4: write blocks' final ids (the tables of the blocks around them),
    holes filled. Returns the number of blocks."""
    pieces = _open(job.work("pieces"))
    table = _open(job.work("relabel"))
    target = _open(os.path.join(job.output, "0"), "r+")
    hole_halo = job.halo if fill else (0,) * len(job.shape)
    rows: dict[int, np.ndarray] = {}
    for index in indices:
        core = job.core(index)
        window = job.window(index, hole_halo)
        local = pieces[window]
        out = np.zeros(local.shape, dtype)
        lo = [w.start // b for w, b in zip(window, job.block, strict=True)]
        hi = [(w.stop - 1) // b for w, b in zip(window, job.block, strict=True)]
        for other in itertools.product(*[range(a, b + 1) for a, b in zip(lo, hi, strict=True)]):
            box = _intersect(job.core(other), window)
            flat = job.flat(other)
            if flat not in rows:
                rows[flat] = np.asarray(table[flat], dtype=dtype)
            sub = _shift(box, window)
            out[sub] = rows[flat][local[sub]]
        if fill:
            out = fill_holes(out, max_size=fill, max_extent=[h - 1 for h in hole_halo])
        target[core] = out[_shift(core, window)]
        mark_done(os.path.join(job.output, DONE_DIR), (4, *index))
        del out, local
        release_free_memory()
    return len(indices)


def _run(func, job, batches, *, workers: int, desc: str, progress: bool, initial: int = 0,
         total: int | None = None, extra=(), client=None):
    """Run ``func(job, batch, *extra)`` for every batch, in Dask's threaded
    scheduler or on ``client``'s cluster; each returns the number of blocks it
    did, or anything else (not counted)."""
    from .cluster import run_tasks
    from .progress import bar

    if client is not None and extra:
        # arrays go to every worker once, not with every task
        extra = tuple(client.scatter(e, broadcast=True) if isinstance(e, np.ndarray) else e
                      for e in extra)
    with bar(total=total if total is not None else sum(len(b) for b in batches),
             initial=initial, desc=desc, unit="block", disable=not progress) as pbar:
        return run_tasks(func, [(job, b, *extra) for b in batches], client=client,
                         workers=workers, pbar=pbar,
                         count=lambda r: r if isinstance(r, int) else 0)


def _clear_arrays() -> None:
    """Forget the arrays this process opened (a new run may rewrite them)."""
    with _ARRAYS_LOCK:
        _ARRAYS.clear()


def _union_find(edges: np.ndarray):
    """Roots (smallest id of each merged group) of the ids in ``edges``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if edges.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, inverse = np.unique(edges.ravel(), return_inverse=True)
    inverse = inverse.reshape(edges.shape)
    n = ids.size
    graph = coo_matrix((np.ones(len(edges), np.int8), (inverse[:, 0], inverse[:, 1])),
                       shape=(n, n))
    _, component = connected_components(graph, directed=False)
    root = np.full(component.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(root, component, ids)  # ids are sorted: the group's smallest
    return ids, root[component]


def segment_store(probabilities: str | os.PathLike, out: str | os.PathLike, *,
                  params: SegmentParams = SegmentParams(),
                  block: Sequence[int] | None = None, halo: Sequence[int] | None = None,
                  threads: int | None = None, resume: bool = True,
                  progress: bool = True, scheduler: str = "threads",
                  address: str | None = None, processes: int | None = None,
                  dask_slurm: Mapping | None = None) -> SegmentResult:
    """Instance labels of a probability store, block by block, stitched.

    Parameters
    ----------
    probabilities : path
        OME-Zarr store written by :func:`unetpipe.predict.predict_store`
        (axes ``c(z)yx``, class 0 = background).
    out : path
        Output OME-Zarr store: labels at array ``0``, axes ``(z)yx``, uint32
        (uint64 when there are more objects), the probabilities' spacing;
        chunks are the blocks. Built at :func:`unetpipe.resume.partial_path`
        and renamed when done.
    params : SegmentParams
        Method and settings; sizes in physical units (the store's spacing).
    block : sequence of int, optional
        Block (= output chunk) per axis; default :data:`DEFAULT_BLOCK`.
    halo : sequence of int, optional
        Context around each block per axis, in pixels; it must exceed the
        reach of the method (growth, closing, an object's radius for the
        watershed); holes as wide as it or wider stay open. Default
        :data:`DEFAULT_HALO`.
    threads : int, optional
        Dask threads (default: one per core); with a local dask.distributed
        cluster, shared among its processes.
    resume : bool
        Continue a partial output made from the same input with the same
        settings.
    progress : bool
        Show progress bars.
    scheduler : {"threads", "distributed", "slurm"}
        Where the per-block passes (1, 2 and 4) run: Dask's threaded
        scheduler; a ``dask.distributed`` cluster (the one at ``address``,
        or a local one of ``processes`` worker processes); or a
        dask-jobqueue ``SLURMCluster`` set by ``dask_slurm`` (see
        :mod:`unetpipe.cluster`). Pass 3 (the relabelling table) runs here.
        The workers must see the stores at the same paths.
    address : str, optional
        A running dask.distributed scheduler, for ``scheduler="distributed"``.
    processes : int, optional
        Worker processes of a local dask.distributed cluster (default 2).
    dask_slurm : mapping, optional
        The ``dask_slurm`` config section, for ``scheduler="slurm"``; every
        worker process runs one Dask thread per core it has.

    Returns
    -------
    SegmentResult
    """
    import zarr

    from .cluster import check_scheduler, dask_client, dask_slurm_settings
    from .io import read_image, replace_path, set_multiscale_metadata

    t0 = time.perf_counter()
    params.check()
    src, out = os.fspath(probabilities), Path(os.fspath(out))
    img = read_image(src)
    if "c" not in img.axes:
        raise InputError(src, f"has no class axis (axes {img.axes}); expected class "
                              "probabilities written by unetpipe predict")
    n_classes = img.data.shape[0]
    try:
        mode_of(n_classes)
    except ValueError as e:
        raise InputError(src, str(e)) from None
    if not os.path.isdir(os.path.join(src, "0")):
        raise InputError(src, "has no full-resolution array '0'")
    shape = img.spatial_shape
    ndim = len(shape)
    for key, value in (("block", block), ("halo", halo)):
        if value is not None and len(value) != ndim:
            raise ConfigError(f"config key 'segment.{key}': {list(value)} has {len(value)} "
                              f"values but {src} has {ndim} spatial axes ({img.spatial_axes})")
    block = tuple(min(int(b), n) for b, n in
                  zip(DEFAULT_BLOCK[ndim] if block is None else block, shape, strict=True))
    halo = tuple(int(h) for h in (default_halo(params, ndim) if halo is None else halo))
    least = min_halo(params, n_classes)
    if min(halo) < least:
        raise ConfigError(f"config key 'segment.halo': {list(halo)} is too small: blocks "
                          f"need at least {least} pixels of context per axis for this "
                          f"method (the gap closing and the growth reach that far)")
    # physical units where the store is calibrated, pixels otherwise
    spacing = tuple(img.spacing) if img.unit else (1.0,) * ndim
    grid = tuple(math.ceil(n / b) for n, b in zip(shape, block, strict=True))
    threads = threads or os.cpu_count() or 1
    check_scheduler(scheduler, stage="segment")
    slurm = dask_slurm_settings(dask_slurm) if scheduler == "slurm" else None
    partial = partial_path(out)
    job = _Job(probabilities=os.path.abspath(src), output=os.path.abspath(partial),
               shape=tuple(shape), block=block, halo=halo, grid=grid, spacing=spacing,
               params=params, n_classes=n_classes)
    fingerprint = {"input": job.probabilities, "input_signature": input_signature(src),
                   "shape": list(shape), "block": list(block), "halo": list(halo),
                   "params": asdict(params), "spacing": list(spacing)}
    all_blocks = list(itertools.product(*[range(g) for g in grid]))
    done = resume_state(partial, fingerprint, resume=resume, stage="segment")
    if done == "complete":  # killed while finishing: every block is there
        attrs = zarr.open_group(str(partial), mode="r").attrs["unetpipe"]
        finish(partial, remove=(WORK_DIR,))
        replace_path(partial, out)
        return SegmentResult(output=os.fspath(out), shape=tuple(shape),
                             objects=int(attrs["objects"]), pieces=0, merges=0, removed=0,
                             blocks=len(all_blocks), resumed=len(all_blocks), block=block,
                             halo=halo, dtype=str(zarr.open_array(str(out / "0")).dtype),
                             seconds=time.perf_counter() - t0)
    if done is None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(partial), mode="w", zarr_format=3)
        work = root.create_group(WORK_DIR)
        work.create_array("pieces", shape=shape, chunks=block, dtype=np.uint32, fill_value=0)
        work.create_array("halos", shape=(*grid, *job.window_max),
                          chunks=(*(1,) * ndim, *job.window_max), dtype=np.uint32,
                          fill_value=0)
        os.makedirs(job.work("sizes"))
        (partial / DONE_DIR).mkdir()
        # last: a store without it is not resumed
        root.attrs["unetpipe"] = {"stage": "segment", "fingerprint": fingerprint}
        done = set()
    resumed = sum(1 for b in all_blocks if (1, *b) in done)
    log.info("segment: %s: shape %s, %s, %d blocks of %s with a halo of %s, %s%s", src,
             "x".join(map(str, shape)), _describe(params, n_classes), len(all_blocks),
             "x".join(map(str, block)), "x".join(map(str, halo)),
             f"{threads} thread(s)" if scheduler == "threads" else f"{scheduler} scheduler",
             f" ({resumed} block(s) done before)" if resumed else "")
    if scheduler == "slurm":
        per_process = None  # every core of a worker job
    elif scheduler == "distributed" and not address:
        per_process = max(1, threads // (processes or 2))
    else:
        per_process = 1
    with dask_client(scheduler, address=address, processes=processes,
                     threads_per_process=per_process, dask_slurm=slurm) as client:
        try:
            # pass 1: segment every block
            todo = [b for b in all_blocks if (1, *b) not in done]
            if todo:
                _run(_segment_blocks, job, [[b] for b in todo], workers=threads,
                     desc="segment", progress=progress, initial=len(all_blocks) - len(todo),
                     total=len(all_blocks), client=client)
            counts = np.array([np.load(job.work("sizes", f"{job.flat(b)}.npy")).size
                               for b in all_blocks], np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
            # pass 2: merges across the blocks' faces, edges and corners
            found = []
            if len(all_blocks) > 1:
                found = _run(_block_edges, job, [[b] for b in all_blocks], workers=threads,
                             desc="stitch", progress=False, extra=(offsets,), client=client)
            edges = np.concatenate([np.zeros((0, 2), np.int64), *[e for e in found]])
            ids, roots = _union_find(edges)
            # pass 3: the relabelling table, block by block
            n_objects, removed, dtype = _write_table(job, partial, counts, offsets, ids, roots,
                                                     spacing)
            root = zarr.open_group(str(partial), mode="r+")
            if "0" not in root:
                root.create_array("0", shape=shape, chunks=block, dtype=dtype, fill_value=0,
                                  dimension_names=list(img.spatial_axes))
            set_multiscale_metadata(root, axes=img.spatial_axes, unit=img.unit,
                                    scales=[list(img.spacing)], name="labels")
            # pass 4: final ids, holes filled
            todo = [b for b in all_blocks if (4, *b) not in done]
            fill = _hole_pixels(params, spacing)
            if todo:
                _run(_relabel_blocks, job, [[b] for b in todo], workers=threads, desc="relabel",
                     progress=progress, initial=len(all_blocks) - len(todo),
                     total=len(all_blocks), extra=(dtype, fill), client=client)
            finished = set(markers(partial / DONE_DIR))
            missing = [b for b in all_blocks if (4, *b) not in finished]
            if missing:
                raise RuntimeError(f"{len(missing)} block(s) of {partial} were not recorded as "
                                   f"done, e.g. {missing[0]}")
            attrs = dict(root.attrs["unetpipe"])
            attrs.update({"source": job.probabilities, "method": params.method,
                          "params": asdict(params), "mode": mode_of(n_classes),
                          "objects": int(n_objects), "block": list(block), "halo": list(halo)})
            root.attrs["unetpipe"] = attrs
            ome = dict(root.attrs["ome"])
            ome["image-label"] = {"version": ome.get("version")}
            root.attrs["ome"] = ome
        finally:
            _clear_arrays()
            if client is not None:
                with contextlib.suppress(Exception):  # a cluster that failed: nothing to clear
                    client.run(_clear_arrays)
    finish(partial, remove=(WORK_DIR,))
    replace_path(partial, out)
    seconds = time.perf_counter() - t0
    result = SegmentResult(output=os.fspath(out), shape=tuple(shape), objects=int(n_objects),
                           pieces=int(counts.sum()), merges=int(len(ids) - np.unique(roots).size),
                           removed=int(removed), blocks=len(all_blocks), resumed=resumed,
                           block=block, halo=halo, dtype=str(np.dtype(dtype)), seconds=seconds)
    log.info("segment: %s -> %s: %d objects (%d block pieces, %d joined across blocks, %d "
             "outside the size range) in %.1f s: %.3g voxels/s", src, out, result.objects,
             result.pieces, result.merges, result.removed, seconds, result.voxels_per_second)
    return result


def _describe(params: SegmentParams, n_classes: int) -> str:
    text = f"{params.method} on {mode_of(n_classes)} probabilities"
    if params.method == "watershed":
        text += f", {params.seeds} seeds"
    return text


def _write_table(job: _Job, partial: Path, counts, offsets, ids, roots, spacing):
    """Pass 3: consecutive final ids for every block's objects, one table chunk
    per block; objects outside the size range get 0.

    Held in memory: arrays over the merged objects (``ids``, sorted, and their
    ``roots``) and one block's sizes at a time. Returns (objects, removed,
    output dtype).
    """
    import zarr

    low, high = _size_range(job.params, spacing)
    # the merged ids of each block, as a slice of the sorted ids
    block_of = np.searchsorted(offsets + counts, ids, side="left")
    starts = np.searchsorted(block_of, np.arange(len(counts) + 1), side="left")
    root_pos = np.searchsorted(ids, roots)  # roots are ids themselves
    group_size = np.zeros(ids.size, np.int64)
    for flat in np.flatnonzero(starts[1:] > starts[:-1]):
        sel = slice(starts[flat], starts[flat + 1])
        sizes = np.load(job.work("sizes", f"{flat}.npy"))
        np.add.at(group_size, root_pos[sel], sizes[ids[sel] - offsets[flat] - 1])
    n_max = int(counts.max()) if counts.size else 0
    work = zarr.open_group(job.work(), mode="r+")
    if "relabel" in work:
        del work["relabel"]
    table = work.create_array("relabel", shape=(len(counts), n_max + 1),
                              chunks=(1, n_max + 1), dtype=np.uint64, fill_value=0)
    new_id = np.zeros(ids.size, np.uint64)  # final id of each merged group's root
    next_id, removed = 1, 0
    for flat in range(len(counts)):
        n = int(counts[flat])
        size = np.load(job.work("sizes", f"{flat}.npy")).astype(np.float64)
        sel = slice(starts[flat], starts[flat + 1])
        local = ids[sel] - offsets[flat]  # 1-based ids of the merged pieces here
        is_root = np.ones(n, bool)
        is_root[local - 1] = roots[sel] == ids[sel]
        size[local - 1] = group_size[root_pos[sel]]
        keep = is_root & (size >= low) & (size <= high)
        removed += int((is_root & ~keep).sum())
        row = np.zeros(n_max + 1, np.uint64)
        k = int(keep.sum())
        row[1:n + 1][keep] = np.arange(next_id, next_id + k, dtype=np.uint64)
        next_id += k
        own = roots[sel] == ids[sel]
        new_id[np.arange(sel.start, sel.stop)[own]] = row[local[own]]
        # a merged piece takes its root's id: the root's block came first
        row[local[~own]] = new_id[root_pos[sel][~own]]
        table[flat] = row
    n_objects = next_id - 1
    dtype = "uint32" if n_objects <= UINT32_MAX else "uint64"
    return n_objects, removed, dtype
