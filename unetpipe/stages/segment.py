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

:func:`unetpipe.stages.instances.segment_array` does this for an array in
memory. :func:`segment_store`
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.boxes import intersect, shift
from ..core.cluster import Execution
from ..core.errors import ConfigError, InputError
from ..core.memory import release_free_memory
from ..io import ngff, resume
from ..io.outputs import check_free_space
from .instances import (
    SegmentParams,
    _hole_pixels,
    _segment,
    _size_range,
    default_halo,
    fill_holes,
    min_halo,
    mode_of,
)

log = logging.getLogger("unetpipe")

DEFAULT_BLOCK = {2: (1024, 1024), 3: (64, 192, 192)}
WORK_DIR = "_work"
# float16 probabilities may round a hair past 0 and 1
PROBABILITY_SLACK = 1e-3
UINT32_MAX = np.iinfo(np.uint32).max


# --- one window -----------------------------------------------------------------------------


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
    given: str = ""  # the probabilities' path as the user gave it, for messages

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
        if not (np.isfinite(probs).all() and probs.min() >= -PROBABILITY_SLACK
                and probs.max() <= 1.0 + PROBABILITY_SLACK):
            raise InputError(job.given or job.probabilities, "holds values that are not "
                                                              "probabilities "
                                                f"(NaN, infinite, or outside [0, 1]) in the "
                                                f"block at {[s.start for s in core]}; expected "
                                                "class probabilities written by unetpipe predict")
        foreground = probs[0] <= 1.0 - job.params.foreground
        cell = probs[1].copy()
        del probs
        labels, seeds = _segment(foreground, cell, n_classes=job.n_classes, params=job.params,
                                 spacing=job.spacing)
        del foreground, cell
        inner = shift(core, window)
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
        resume.mark_done(os.path.join(job.output, resume.DONE_DIR), (1, *index))
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
        r1 = intersect(a_win, b_core)
        if r1 is not None:
            views.append((own_halo[shift(r1, a_win)], pieces[r1]))
        r2 = intersect(b_win, a_core)
        if r2 is not None:
            views.append((pieces[r2], other_halo[shift(r2, b_win)]))
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
            box = intersect(job.core(other), window)
            flat = job.flat(other)
            if flat not in rows:
                rows[flat] = np.asarray(table[flat], dtype=dtype)
            sub = shift(box, window)
            out[sub] = rows[flat][local[sub]]
        if fill:
            out = fill_holes(out, max_size=fill, max_extent=[h - 1 for h in hole_halo])
        target[core] = out[shift(core, window)]
        resume.mark_done(os.path.join(job.output, resume.DONE_DIR), (4, *index))
        del out, local
        release_free_memory()
    return len(indices)


def _run(func, job, batches, *, workers: int, desc: str, progress: bool, initial: int = 0,
         total: int | None = None, extra=(), client=None):
    """Run ``func(job, batch, *extra)`` for every batch, in Dask's threaded
    scheduler or on ``client``'s cluster; each returns the number of blocks it
    did, or anything else, which counts as one block (pass 2's batches hold one)."""
    from ..core.cluster import run_tasks
    from ..core.progress import bar

    if client is not None and extra:
        # arrays go to every worker once, not with every task
        extra = tuple(client.scatter(e, broadcast=True) if isinstance(e, np.ndarray) else e
                      for e in extra)
    with bar(total=total if total is not None else sum(len(b) for b in batches),
             initial=initial, desc=desc, unit="block", disable=not progress) as pbar:
        return run_tasks(func, [(job, b, *extra) for b in batches], client=client,
                         workers=workers, pbar=pbar,
                         count=lambda r: r if isinstance(r, int) else 1)


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
                  execution: Execution | None = None, ngff_version: str | None = None,
                  source: str | os.PathLike | None = "auto") -> SegmentResult:
    """Instance labels of a probability store, block by block, stitched.

    Parameters
    ----------
    probabilities : path
        OME-Zarr store written by :func:`unetpipe.stages.predict.predict_store`
        (axes ``c(z)yx``, class 0 = background).
    out : path
        Output OME-Zarr store: labels at array ``0``, axes ``(z)yx``, uint32
        (uint64 when there are more objects), the probabilities' spacing;
        chunks are the blocks. Built at :func:`unetpipe.io.resume.partial_path`
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
    execution : Execution, optional
        Threads, scheduler, resume and progress
        (:class:`unetpipe.core.cluster.Execution`; default: one Dask thread per
        core, Dask's threaded scheduler, resume). ``threads`` are Dask
        threads; with a local dask.distributed cluster they are shared among
        its processes, and a SLURM worker process runs one Dask thread per
        core it has. The per-block passes (1, 2 and 4) run on the scheduler;
        pass 3 (the relabelling table) runs here. The workers must see the
        stores at the same paths. ``workers`` is not used.
    ngff_version : str, optional
        ``"0.4"`` or ``"0.5"`` (:mod:`unetpipe.io.ngff`; its default when None).
    source : path, None or "auto"
        The image the labels belong to, named (relative to ``out``) in the
        store's NGFF ``image-label`` metadata so that viewers open the two
        together. "auto": the preprocessed image the probabilities were
        predicted from, where it exists, else the probabilities.

    Returns
    -------
    SegmentResult
    """
    import zarr

    from ..io.images import add_levels, pyramid_depth, read_image, replace_path

    t0 = time.perf_counter()
    run = execution or Execution()
    params.check()
    src, out = os.fspath(probabilities), Path(os.fspath(out))
    img = read_image(src)
    if "c" not in img.axes:
        raise InputError(src, f"has no class axis (axes {img.axes}); expected class "
                              "probabilities written by unetpipe predict")
    n_classes = img.data.shape[0]
    if np.dtype(img.data.dtype).kind != "f":
        raise InputError(src, f"holds {img.data.dtype} values; expected class probabilities "
                              "(floats in [0, 1]) written by unetpipe predict")
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
    threads = run.cores
    run.check("segment")
    # the labels (uint32) and the work arrays of the passes (block pieces, uint32)
    check_free_space(out, 2 * 4 * math.prod(shape), compression=20.0,
                     what=f"the labels of {src} ({'x'.join(map(str, shape))}, with the work "
                          "arrays)")
    partial = resume.partial_path(out)
    job = _Job(probabilities=os.path.abspath(src), given=src, output=os.path.abspath(partial),
               shape=tuple(shape), block=block, halo=halo, grid=grid, spacing=spacing,
               params=params, n_classes=n_classes)
    try:
        version = ngff.check_version(ngff_version)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    fingerprint = {"input": job.probabilities, "input_signature": resume.input_signature(src),
                   "shape": list(shape), "block": list(block), "halo": list(halo),
                   "params": asdict(params), "spacing": list(spacing),
                   "ngff_version": version}
    all_blocks = list(itertools.product(*[range(g) for g in grid]))
    done = resume.resume_state(partial, fingerprint, resume=run.resume, stage="segment")
    if done == "complete":  # killed while finishing: every block is there
        attrs = zarr.open_group(str(partial), mode="r").attrs["unetpipe"]
        resume.finish(partial, remove=(WORK_DIR,))
        replace_path(partial, out)
        return SegmentResult(output=os.fspath(out), shape=tuple(shape),
                             objects=int(attrs["objects"]), pieces=0, merges=0, removed=0,
                             blocks=len(all_blocks), resumed=len(all_blocks), block=block,
                             halo=halo, dtype=str(zarr.open_array(str(out / "0")).dtype),
                             seconds=time.perf_counter() - t0)
    if done is None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        root = ngff.new_group(partial, version)
        work = root.create_group(WORK_DIR)
        ngff.create_array(work, "pieces", shape=shape, chunks=block, dtype=np.uint32)
        ngff.create_array(work, "halos", shape=(*grid, *job.window_max),
                          chunks=(*(1,) * ndim, *job.window_max), dtype=np.uint32)
        os.makedirs(job.work("sizes"))
        (partial / resume.DONE_DIR).mkdir()
        # last: a store without it is not resumed
        root.attrs["unetpipe"] = {"stage": "segment", "fingerprint": fingerprint}
        done = set()
    resumed = sum(1 for b in all_blocks if (1, *b) in done)
    log.info("segment: %s: shape %s, %s, %d blocks of %s with a halo of %s, %s%s", src,
             "x".join(map(str, shape)), _describe(params, n_classes), len(all_blocks),
             "x".join(map(str, block)), "x".join(map(str, halo)),
             f"{threads} thread(s)" if run.scheduler == "threads"
             else f"{run.scheduler} scheduler",
             f" ({resumed} block(s) done before)" if resumed else "")
    if run.scheduler == "slurm":
        per_process = None  # every core of a worker job
    elif run.local_cluster:
        per_process = max(1, threads // (run.processes or 2))
    else:
        per_process = 1
    with run.client(threads_per_process=per_process) as client:
        try:
            # pass 1: segment every block
            todo = [b for b in all_blocks if (1, *b) not in done]
            if todo:
                _run(_segment_blocks, job, [[b] for b in todo], workers=threads,
                     desc="segment", progress=run.progress, initial=len(all_blocks) - len(todo),
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
                ngff.create_array(root, "0", shape=shape, chunks=block, dtype=dtype,
                                  axes=img.spatial_axes)
            # pass 4: final ids, holes filled
            todo = [b for b in all_blocks if (4, *b) not in done]
            fill = _hole_pixels(params, spacing)
            if todo:
                _run(_relabel_blocks, job, [[b] for b in todo], workers=threads, desc="relabel",
                     progress=run.progress, initial=len(all_blocks) - len(todo),
                     total=len(all_blocks), extra=(dtype, fill), client=client)
            finished = set(resume.markers(partial / resume.DONE_DIR))
            missing = [b for b in all_blocks if (4, *b) not in finished]
            if missing:
                raise RuntimeError(f"{len(missing)} block(s) of {partial} were not recorded as "
                                   f"done, e.g. {missing[0]}")
            attrs = dict(root.attrs["unetpipe"])
            attrs.update({"source": job.probabilities, "method": params.method,
                          "params": asdict(params), "mode": mode_of(n_classes),
                          "objects": int(n_objects), "block": list(block), "halo": list(halo)})
            root.attrs["unetpipe"] = attrs
            # the pyramid (picked pixels, never averaged ids) and its metadata
            level = 1
            while str(level) in root:  # levels of a run killed while writing them
                del root[str(level)]
                level += 1
            add_levels(root, axes=img.spatial_axes, spacing=img.spacing, unit=img.unit,
                       levels=pyramid_depth(shape, block), name="labels", labels=True,
                       origin=img.origin)
            ngff.write_metadata(root, image_label=ngff.image_label(
                version, source=_label_source(source, src, out)))
        finally:
            _clear_arrays()
            if client is not None:
                with contextlib.suppress(Exception):  # a cluster that failed: nothing to clear
                    client.run(_clear_arrays)
    resume.finish(partial, remove=(WORK_DIR,))
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


def _label_source(source, probabilities: str, out: Path) -> str | None:
    """Where a labels store's image is, relative to the store (None: nowhere)."""
    if source == "auto":
        from ..io.images import group_attributes

        found = (group_attributes(Path(probabilities)) or {}).get("unetpipe") or {}
        pre = found.get("source") if isinstance(found, dict) else None
        source = pre if isinstance(pre, str) and os.path.isdir(pre) else probabilities
    if source is None:
        return None
    return os.path.relpath(os.path.abspath(os.fspath(source)), os.path.abspath(out))


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
