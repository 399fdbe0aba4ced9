"""Prediction with a trained U-Net: chunked overlap-tile inference.

Both paths predict an image block by block, each block from a window that
adds a halo covering the network's receptive field, mirror-padded at the
image border (the paper's overlap-tile strategy). Window origins stay on the
network's pooling grid, so the result does not depend on the block size.

- :func:`unetpipe.nn.tiles.predict_array` predicts an image held in memory
  (validation images).
- :func:`predict_store` predicts a preprocessed (OME-)Zarr store of any size
  into an OME-Zarr store of class probabilities whose chunks are the blocks.
  Windows are read lazily, batches of blocks go through the network
  in parallel Dask tasks, and each finished block is written and recorded at
  once, so memory does not grow with the image and a killed run resumes
  where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.cluster import Execution, run_tasks
from ..core.device import select_device, worker_device
from ..core.errors import ConfigError, InputError
from ..core.memory import release_free_memory, reuse_large_buffers
from ..core.progress import bar
from ..io import ngff, resume
from ..io.outputs import check_free_space
from ..nn.checkpoint import EFFECTIVE_HALO, SEGMENT_PARAMS
from ..nn.tiles import (
    HALO_TOLERANCE,
    _clip,
    channels_last,
    effective_halo,
    exact_halo,
    fold_batchnorm,
    forward_windows,
    probe_region,
    read_window,
    tiling,
)

log = logging.getLogger("unetpipe")


# --- chunked prediction of a store ---------------------------------------------------


@dataclass
class PredictResult:
    """What :func:`predict_store` did."""

    output: str
    shape: tuple[int, ...]
    classes: list[str]
    block: tuple[int, ...]
    window: tuple[int, ...]
    blocks: int
    computed: int
    skipped: int
    resumed: int
    seconds: float
    device: str
    workers: int
    torch_threads: int
    batch_size: int

    @property
    def voxels_per_second(self) -> float:
        """Image voxels predicted (or skipped as empty) by this run, per second."""
        done = self.computed + self.skipped
        per_block = math.prod(self.shape) / max(self.blocks, 1)
        return done * per_block / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to predict blocks; plain values, so it pickles."""

    checkpoint: str
    checkpoint_sha: str
    image: str
    output: str
    channel_axis: bool
    shape: tuple[int, ...]
    block: tuple[int, ...]
    window: tuple[int, ...]
    offset: tuple[int, ...]
    device: str
    amp: bool
    tta: bool
    skip_empty: float | None
    skip_level: str | None
    skip_factors: tuple[int, ...] | None
    torch_threads: int
    classes: int
    dtype: str
    ngff_version: str = "0.4"


_STATE: dict = {}
_STATE_LOCK = threading.Lock()
_FORWARD_LOCK = threading.Lock()
"""One network pass at a time in a process: each pass has all the process's threads."""
MODEL_LOADS = []
"""Checkpoints loaded by this process (one entry per load); tests and logs read it."""


def _worker_state(job: _Job):
    """The model and open arrays of a job, loaded once per process (worker)."""
    key = job  # a new job (another block, dtype, output) never reuses an old one's arrays
    with _STATE_LOCK:
        state = _STATE.get(key)
        if state is None:
            import torch
            import zarr

            from ..nn.checkpoint import build_model
            from ..nn.models import load_checkpoint

            # on the CPU the heap keeps the network's buffers for the next pass
            # (trimming it after each batch would fault them in anew)
            reuse = job.device == "cpu" and reuse_large_buffers()
            if job.device == "cpu" and torch.get_num_threads() != job.torch_threads:
                torch.set_num_threads(job.torch_threads)
            device = torch.device(job.device)
            model = channels_last(fold_batchnorm(build_model(load_checkpoint(job.checkpoint)))
                                  .to(device))
            MODEL_LOADS.append(job.checkpoint)
            source = _level0(job.image)
            low = zarr.open_array(job.skip_level, mode="r") if job.skip_level else None
            target = zarr.open_array(os.path.join(job.output, "0"), mode="r+")
            state = {"model": model, "device": device, "source": source, "low": low,
                     "target": target, "trim": not reuse}
            _STATE.clear()  # one job per process at a time: drop earlier models
            _STATE[key] = state
    return state


def _level0(path: str):
    """The input's full-resolution pixels, channel first: the Zarr array itself
    where the store keeps them in that order (a preprocessed store does; reading
    it needs no Dask graph), else the reader's lazy array."""
    import zarr

    from ..io.images import read_image

    image = read_image(path)
    data = image.data if "c" in image.axes else image.data[None]
    ms = ((image.metadata.get("ngff") or {}).get("multiscales") or [{}])[0]
    names = [a.get("name") if isinstance(a, dict) else a for a in ms.get("axes") or []]
    datasets = ms.get("datasets") or []
    if datasets and names == list(image.axes):
        try:
            array = zarr.open_array(os.path.join(path, datasets[0]["path"]), mode="r")
        except Exception:  # not where the metadata say: the reader's array will do
            return data
        if array.shape == image.data.shape:
            return array if "c" in image.axes else _ChannelView(array)
    return data


class _ChannelView:
    """A channel axis of length 1 in front of an array without one, for reading boxes."""

    def __init__(self, array):
        self.array, self.shape = array, (1, *array.shape)

    def __getitem__(self, box):
        return self.array[box[1:]][None]


def _read(array, box, path):
    """A box of a Zarr or Dask array as float32, read in the calling thread."""
    try:
        block = array[box]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        return np.asarray(block, dtype=np.float32)
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, f"cannot read pixel data ({type(e).__name__}: {e})") from e


def _is_empty(job: _Job, low, origin) -> bool:
    """True when the low-resolution window of a block stays below the threshold."""
    starts = [o - f for o, f in zip(origin, job.offset, strict=True)]
    box = []
    for s, w, f, n in zip(starts, job.window, job.skip_factors, low.shape[-len(starts):],
                          strict=True):
        lo, hi = max(0, s) // f, min(n * f, s + w) // f + 1
        box.append(slice(lo, max(lo + 1, min(n, hi))))
    head = (slice(None),) if job.channel_axis else ()
    values = _read(low, (*head, *box), job.image)
    return bool(values.size) and float(values.max()) < job.skip_empty


def _run_blocks(job: _Job, indices: Sequence[tuple[int, ...]]) -> tuple[int, int]:
    """Predict, write and record a batch of blocks; returns (computed, skipped)."""
    state = _worker_state(job)
    source, low, target = state["source"], state["low"], state["target"]
    done_dir = os.path.join(job.output, resume.DONE_DIR)
    origins = [tuple(i * b for i, b in zip(index, job.block, strict=True)) for index in indices]
    windows, empty = [], []
    for origin in origins:
        if job.skip_empty is not None and low is not None and _is_empty(job, low, origin):
            empty.append(True)
            continue
        window = read_window(source, [o - f for o, f in zip(origin, job.offset, strict=True)],
                             job.window, read=lambda a, box: _read(a, box, job.image))
        # without a pyramid the check is on the window itself (still no network pass)
        empty.append(job.skip_empty is not None and low is None
                     and float(window.max()) < job.skip_empty)
        if not empty[-1]:
            windows.append(window)
    probs = []
    if windows:
        batch = np.stack(windows)
        with _FORWARD_LOCK:
            probs = list(forward_windows(state["model"], batch, job.block,
                                         device=state["device"], amp=job.amp, tta=job.tta,
                                         channels_last=True))
    probs.reverse()
    for index, origin, e in zip(indices, origins, empty, strict=True):
        region, local = _clip(origin, job.block, job.shape)
        if e:
            p = np.zeros((job.classes, *[r.stop - r.start for r in region]), job.dtype)
            p[0] = 1
        else:
            p = probs.pop()[(slice(None), *local)].astype(job.dtype, copy=False)
        target[(slice(None), *region)] = p
        # the marker follows the chunk: a block without one is computed again (a
        # task retried by dask.distributed may find its marker there already)
        resume.mark_done(done_dir, index)
    n_empty = sum(empty)
    if state["trim"]:
        release_free_memory()
    return len(origins) - n_empty, n_empty


def model_sha256(path: str) -> str:
    """A model's identity: the sha256 of its file (of an unpacked package's
    description, which pins the weights' digests)."""
    if os.path.isdir(path):
        # an unpacked bioimage.io model: its description pins the weights' sha256
        from ..nn.bioimageio import RDF_NAMES

        path = next((os.path.join(path, n) for n in RDF_NAMES
                     if os.path.isfile(os.path.join(path, n))), path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _open_input(path: str, checkpoint: dict, ckpt_path: str):
    """The input image (lazily), checked against the checkpoint's model."""
    from ..io.images import read_image

    image = read_image(path)
    cfg = checkpoint["model"]["config"]
    ndim, channels = cfg["ndim"], cfg["in_channels"]
    if image.ndim != ndim:
        raise InputError(path, f"is {image.ndim}D (axes {image.axes}, shape "
                               f"{tuple(image.data.shape)}), but the model in {ckpt_path} "
                               f"predicts {ndim}D {'stacks' if ndim == 3 else 'images'}")
    have = image.data.shape[0] if "c" in image.axes else 1
    if have != channels:
        raise InputError(path, f"has {have} channel(s) (axes {image.axes}, shape "
                               f"{tuple(image.data.shape)}), but the model in {ckpt_path} was "
                               f"trained on {channels}")
    return image


def _skip_level(path: str, image, window: Sequence[int]):
    """The pyramid level of an OME-Zarr input for the empty-block check.

    The coarsest level downsampled at most 4 times per axis (pyramids are
    averages, so a small bright object is dimmed by at most the product)
    that keeps at least 4 pixels per window axis. Returns (array path,
    factors), or None (no usable level: the check then uses the window).
    """
    import zarr

    ms = ((image.metadata.get("ngff") or {}).get("multiscales") or [{}])[0]
    datasets = [d.get("path") for d in ms.get("datasets", []) if d.get("path")]
    if len(datasets) < 2:
        return None
    # the image group: the store, or its first series (bioformats2raw)
    roots = [r for r in (path, os.path.join(path, "0"))
             if os.path.isdir(os.path.join(r, datasets[0]))]
    if not roots:
        return None
    spatial0 = image.spatial_shape
    best = None
    for name in datasets[1:]:
        try:
            arr = zarr.open_array(os.path.join(roots[0], name), mode="r")
        except Exception:
            continue
        if arr.ndim != image.data.ndim:  # singleton axes dropped on reading: no mapping
            continue
        shape = arr.shape[-len(spatial0):]
        factors = tuple(max(1, round(s0 / s)) for s0, s in zip(spatial0, shape, strict=True))
        if all(f <= 4 and w // f >= 4 for w, f in zip(window, factors, strict=True)):
            best = (os.path.abspath(os.path.join(roots[0], name)), factors)
    return best


HALO_CHOICES = ("auto", "exact")
"""The named halos of ``predict.halo``; a list of sizes is the third kind."""

_MEASURED: dict = {}
"""Halos measured at first use in this process: (model sha256, tolerance) -> halo."""


def resolve_halo(halo, ckpt: dict, img, *, tolerance: float = HALO_TOLERANCE, device=None,
                 ckpt_path: str | None = None,
                 sha256: str | None = None) -> tuple[int, ...] | None:
    """The halo in pixels that ``predict.halo`` names for this model and image.

    ``"exact"`` (and None: the former default) gives half the receptive field.
    ``"auto"`` gives the halo stored with the model when training ended
    (``checkpoint["effective_halo"]``, measured for the same tolerance), else
    measures it on the centre of ``img`` (:func:`unetpipe.nn.tiles.effective_halo`),
    once per model (``sha256``, else that of ``ckpt_path``) and process. A list
    is used as given. Valid-padding models set their own context: None.
    """
    cfg = ckpt["model"]["config"]
    if cfg.get("padding", "same") != "same":
        return None
    if halo is None or halo == "exact":
        return exact_halo(cfg)
    if halo != "auto":
        return tuple(int(h) for h in halo)
    stored = ckpt.get(EFFECTIVE_HALO) or {}
    if stored.get("halo") and len(stored["halo"]) == cfg["ndim"] \
            and abs(float(stored.get("tolerance", -1)) - tolerance) <= 1e-12:
        return tuple(int(h) for h in stored["halo"])
    key = (sha256 or (model_sha256(ckpt_path) if ckpt_path else id(ckpt)), float(tolerance))
    if key not in _MEASURED:
        import torch

        from ..nn.checkpoint import build_model

        device = torch.device("cpu") if device is None else device
        model = build_model(ckpt).to(device)
        channels = img.data if "c" in img.axes else img.data[None]
        region = probe_region(img.spatial_shape, cfg["ndim"])
        crop = _read(channels, (slice(None), *region), img.path)
        t0 = time.perf_counter()
        found = effective_halo(model, crop, tolerance=tolerance, device=device)
        _MEASURED[key] = tuple(found["halo"])
        log.info("predict: the model %s carries no measured halo; measured on the centre of "
                 "%s (%s) in %.1f s: %s (exact %s), largest change %.2g <= %g",
                 ckpt_path or "", img.path, "x".join(map(str, found["shape"])),
                 time.perf_counter() - t0, found["halo"], found["exact"], found["deviation"],
                 tolerance)
    return _MEASURED[key]


def default_workers(threads: int, device: str = "cpu") -> int:
    """Dask threads per process. The network runs one pass at a time with all
    the threads; a second Dask thread reads and writes the next batch
    meanwhile. That pays on a GPU, and on a CPU with cores to spare: on two
    cores the reading and writing only take cycles from the network (measured:
    one Dask thread was 6% faster, in 18% less memory), so up to four cores
    have one."""
    if device != "cpu":
        return 2
    return 1 if threads <= 4 else 2


def predict_store(checkpoint: str | os.PathLike, image: str | os.PathLike,
                  out: str | os.PathLike, *, block: Sequence[int] | None = None,
                  halo: str | Sequence[int] | None = "auto", batch_size: int | None = None,
                  device: str = "auto", bf16: bool = True, tta: bool = False,
                  skip_empty: float | None = None, dtype: str = "float32",
                  execution: Execution | None = None,
                  ngff_version: str | None = None,
                  halo_tolerance: float = HALO_TOLERANCE) -> PredictResult:
    """Class probabilities of a preprocessed store, chunk by chunk, resumably.

    Parameters
    ----------
    checkpoint : path
        A checkpoint written by training (``checkpoint_best.pt``), or a
        bioimage.io package exported by unetpipe.
    image : path
        Preprocessed OME-Zarr store (full resolution at array ``0``, axes
        ``c(z)yx`` or ``(z)yx``).
    out : path
        Output OME-Zarr store. Axes ``c(z)yx``, ``c`` the classes; chunks
        are the blocks. It is built at :func:`unetpipe.io.resume.partial_path` and renamed to
        ``out`` when every block is done.
    block : sequence of int, optional
        Output block (= chunk) per spatial axis; see :func:`tiling`.
    halo : "auto", "exact", sequence of int or None
        Context added around each block per spatial axis. ``"auto"`` (the
        default): the model's measured halo, within
        ``halo_tolerance`` of whole-image prediction (stored in the checkpoint
        when training ends, else measured on this image's centre at first use;
        :func:`resolve_halo`). ``"exact"`` (None too): half the receptive
        field, equal to whole-image prediction. Ignored for valid-padding
        models.
    batch_size : int, optional
        Blocks per forward pass. Default: 4 on CUDA, 1 on the CPU.
    device : {"auto", "cuda", "mps", "cpu"}
    bf16 : bool
        bf16 autocast on CUDA.
    tta : bool
        Average over all flips of the spatial axes (4 passes in 2D, 8 in 3D).
    skip_empty : float, optional
        Blocks whose window never exceeds this (normalised) intensity in the
        coarsest pyramid level of the input are not predicted; they are
        written as background. None: predict every block.
    dtype : {"float32", "float16"}
        Stored probability type.
    execution : Execution, optional
        Threads, Dask threads (``workers``), scheduler, resume and progress
        (:class:`unetpipe.core.cluster.Execution`; default: all cores, Dask's
        threaded scheduler, resume). torch gets ``threads // workers``
        threads per Dask thread. On a ``dask.distributed`` or SLURM cluster
        each worker process loads the model once, and with ``device="auto"``
        a worker picks the device; a SLURM worker job's cores are shared out
        among its processes' Dask threads.
    ngff_version : str, optional
        ``"0.4"`` or ``"0.5"`` (:mod:`unetpipe.io.ngff`; its default when None).
    halo_tolerance : float
        Largest change of any probability the ``auto`` halo may cause.

    Returns
    -------
    PredictResult

    Raises
    ------
    InputError
        The input is unreadable, or its dimensionality or channel count does
        not match the checkpoint's model.
    """
    import torch

    from ..nn.models import load_checkpoint

    t0 = time.perf_counter()
    run = execution or Execution()
    ckpt_path, image_path, out = os.fspath(checkpoint), os.fspath(image), Path(os.fspath(out))
    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt["model"]["config"]
    img = _open_input(image_path, ckpt, ckpt_path)
    spatial = img.spatial_shape
    _check_spacing(img, ckpt, image_path)
    for key, value in (("block", block), ("halo", halo)):
        if isinstance(value, str):
            if key == "halo" and value in HALO_CHOICES:
                continue
            raise ConfigError(f"config key 'predict.{key}': {value!r} is not one of "
                              f"{', '.join(HALO_CHOICES)} nor a list of sizes")
        if value is not None and len(value) != len(spatial):
            raise ConfigError(f"config key 'predict.{key}': {list(value)} has {len(value)} "
                              f"values but {image_path} has {len(spatial)} spatial axes "
                              f"({img.spatial_axes})")
    run.check("predict")
    slurm = run.slurm
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"config key 'predict.dtype': {dtype!r} is not float32 or float16")
    try:
        version = ngff.check_version(ngff_version)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.get("padding", "same") == "valid" and halo is not None and not isinstance(halo, str):
        log.warning("predict: a valid-padding model sets its own context; the halo %s is "
                    "ignored", list(halo))
        halo = None
    if not 0 < halo_tolerance < 1:
        raise ConfigError(f"config key 'predict.halo_tolerance': {halo_tolerance} is not "
                          "between 0 and 1")
    # in this process: the device is known now, and decides the Dask threads
    here = select_device(device, key="predict.device") if run.scheduler == "threads" else None
    workers = run.workers or default_workers(run.cores, here.type if here else "unknown")
    # One network pass at a time per process, on all of its cores (a pass on
    # two threads is as fast as two passes on one each, in half the memory);
    # the process's other Dask threads read and write meanwhile.
    if slurm is not None:
        torch_threads = max(1, int(slurm["cores"]) // int(slurm["processes_per_job"]))
    else:
        processes = (run.processes or 2) if run.local_cluster else 1
        torch_threads = max(1, run.cores // processes)
    check_free_space(out, int(cfg["out_channels"]) * math.prod(spatial) * np.dtype(dtype).itemsize,
                     what=f"the probabilities of {image_path} ({cfg['out_channels']} x "
                          f"{'x'.join(map(str, spatial))} {dtype})")
    with run.client(threads_per_process=workers) as client:
        if client is None:
            dev = here if here is not None else select_device(device, key="predict.device")
        elif device == "auto":
            # the workers, not this process, run the network: one of them decides
            log.info("predict: waiting for a Dask worker to pick the device")
            client.wait_for_workers(1)
            dev = torch.device(client.submit(worker_device, device, "predict.device",
                                             pure=False).result())
        else:
            dev = torch.device(device)
        sha256 = model_sha256(ckpt_path)
        halo_px = resolve_halo(halo, ckpt, img, tolerance=halo_tolerance,
                               device=dev if client is None else torch.device("cpu"),
                               ckpt_path=ckpt_path, sha256=sha256)
        block_, window, offset = tiling(cfg, spatial, block=block, halo=halo_px)
        skip = _skip_level(image_path, img, window) if skip_empty is not None else None
        job = _Job(
            checkpoint=os.path.abspath(ckpt_path), checkpoint_sha=sha256,
            image=os.path.abspath(image_path), output=os.path.abspath(resume.partial_path(out)),
            channel_axis="c" in img.axes, shape=tuple(spatial), block=tuple(block_),
            window=tuple(window), offset=tuple(offset), device=str(dev),
            amp=bool(bf16) and dev.type == "cuda", tta=bool(tta),
            skip_empty=None if skip_empty is None else float(skip_empty),
            skip_level=skip[0] if skip else None, skip_factors=skip[1] if skip else None,
            torch_threads=torch_threads, classes=int(cfg["out_channels"]), dtype=dtype,
            ngff_version=version,
        )
        return _predict_blocks(job, ckpt=ckpt, img=img, out=out, image_path=image_path,
                               batch_size=batch_size or (4 if dev.type == "cuda" else 1),
                               workers=workers, run=run, client=client, t0=t0)


def _predict_blocks(job: _Job, *, ckpt: dict, img, out: Path, image_path: str,
                    batch_size: int, workers: int, run: Execution, client,
                    t0: float) -> PredictResult:
    """:func:`predict_store` once the job, the device and the cluster (if any) are known:
    the blocks not done before, then the store renamed into place."""
    import torch

    from ..io.images import replace_path

    mode = (ckpt.get("targets") or {}).get("mode") or "two_class"
    classes = list((ckpt.get("targets") or {}).get("classes")
                   or (["background", "cell"] if mode == "two_class"
                       else ["background", "interior", "boundary"]))
    n_classes, spatial, dtype = job.classes, job.shape, job.dtype
    classes = classes[:n_classes] + [f"class{i}" for i in range(len(classes), n_classes)]
    dev = torch.device(job.device)
    # what the stored values depend on; threads, batch size and scheduler change
    # nothing, the device type and bf16 change the rounding
    fingerprint = {
        "checkpoint_sha256": job.checkpoint_sha, "input": job.image,
        "input_signature": resume.input_signature(image_path), "shape": list(img.data.shape),
        "block": list(job.block), "window": list(job.window), "offset": list(job.offset),
        "tta": job.tta, "skip_empty": job.skip_empty, "dtype": dtype,
        "device_type": dev.type, "bf16": job.amp, "ngff_version": job.ngff_version,
    }
    partial = Path(job.output)
    grid = [math.ceil(s / b) for s, b in zip(spatial, job.block, strict=True)]
    all_blocks = list(itertools.product(*[range(g) for g in grid]))
    done = resume.resume_state(partial, fingerprint, resume=run.resume, stage="predict")
    if done == "complete":  # killed while finishing: every block is there
        done = set(all_blocks)
    elif done is None:
        _create_output(partial, level0_shape=(n_classes, *spatial), img=img, block=job.block,
                       dtype=dtype, fingerprint=fingerprint, classes=classes, ckpt=ckpt,
                       ckpt_path=job.checkpoint, version=job.ngff_version,
                       settings={"block": list(job.block), "window": list(job.window),
                                 "offset": list(job.offset), "tta": job.tta,
                                 "skip_empty": job.skip_empty})
        done = set()
    todo = [b for b in all_blocks if b not in done]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    log.info("predict: %s: shape %s, %d blocks of %s from windows of %s (%d done before), "
             "%d batch(es) of %d on %s, %d Dask thread(s) x %d torch thread(s)%s",
             image_path, "x".join(map(str, spatial)), len(all_blocks),
             "x".join(map(str, job.block)), "x".join(map(str, job.window)), len(done),
             len(batches), batch_size, dev, workers, job.torch_threads,
             ", flip TTA" if job.tta else "")
    counts = [0, 0]
    t_start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    previous_benchmark = torch.backends.cudnn.benchmark
    if dev.type == "cpu":
        torch.set_num_threads(job.torch_threads)
    else:
        torch.backends.cudnn.benchmark = True  # one window shape: tune once
    try:
        with bar(total=len(all_blocks), initial=len(done), desc="predict", unit="block",
                 disable=not run.progress) as pbar:
            if batches:
                results = run_tasks(_run_blocks, [(job, b) for b in batches], client=client,
                                    workers=workers, pbar=pbar, count=sum)
                counts = [sum(r[0] for r in results), sum(r[1] for r in results)]
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_benchmark
        _STATE.clear()
    seconds = time.perf_counter() - t_start
    if len(done) < len(all_blocks):
        finished = set(resume.markers(partial / resume.DONE_DIR))
        missing = [b for b in all_blocks if b not in finished]
        if missing:
            raise RuntimeError(f"{len(missing)} block(s) of {partial} were not recorded as "
                               f"done, e.g. {missing[0]}")
    resume.finish(partial)
    replace_path(partial, out)
    result = PredictResult(
        output=os.fspath(out), shape=tuple(spatial), classes=classes, block=tuple(job.block),
        window=tuple(job.window), blocks=len(all_blocks), computed=counts[0],
        skipped=counts[1], resumed=len(done), seconds=seconds, device=str(dev),
        workers=workers, torch_threads=job.torch_threads, batch_size=batch_size,
    )
    log.info("predict: %s -> %s: %d blocks (%d computed, %d skipped as empty, %d done "
             "before) in %.1f s: %.3g voxels/s (%.3g blocks/s), %.1f s in all",
             image_path, out, result.blocks, result.computed, result.skipped, result.resumed,
             seconds, result.voxels_per_second,
             (result.computed + result.skipped) / seconds if seconds > 0 else 0.0,
             time.perf_counter() - t0)
    return result


def _check_spacing(img, ckpt: dict, path: str) -> None:
    data = ckpt.get("data") or {}
    trained = data.get("spacing")
    if not trained or img.unit is None or data.get("unit") is None:
        return
    ratio = [a / b for a, b in zip(img.spacing, trained, strict=False) if b]
    if any(r > 1.25 or r < 0.8 for r in ratio):
        log.warning("%s: pixel size %s differs from the training data's %s; predictions "
                    "may suffer (resample the image, or train on data like it)", path,
                    list(img.spacing), list(trained))


def _create_output(partial: Path, *, level0_shape, img, block, dtype, fingerprint, classes,
                   ckpt, ckpt_path, version, settings) -> None:
    from ..io.images import set_multiscale_metadata

    partial.parent.mkdir(parents=True, exist_ok=True)
    root = ngff.new_group(partial, version)
    spatial_axes = img.spatial_axes
    axes = "c" + spatial_axes
    ngff.create_array(root, "0", shape=level0_shape, chunks=(level0_shape[0], *block),
                      dtype=dtype, axes=axes, fast=True)
    # the classes are the channels: named, each in its colour
    set_multiscale_metadata(root, axes=axes, unit=img.unit, scales=[[1.0, *img.spacing]],
                            translations=[[0.0, *img.origin]], name="probabilities",
                            channel_names=classes)
    root.attrs["unetpipe"] = {
        "stage": "predict", "classes": classes, "source": os.path.abspath(img.path),
        "checkpoint": ckpt_path, "checkpoint_iteration": ckpt.get("iteration"),
        "mode": (ckpt.get("targets") or {}).get("mode"), "fingerprint": fingerprint,
        **settings,
        # tuned settings: segment uses them (stages.tune)
        **({SEGMENT_PARAMS: ckpt[SEGMENT_PARAMS]} if ckpt.get(SEGMENT_PARAMS) else {}),
    }
    (partial / resume.DONE_DIR).mkdir()
