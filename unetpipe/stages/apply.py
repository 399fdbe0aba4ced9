"""Apply a trained model to raw images in one go: preprocess, predict, segment, measure.

:func:`apply_images` runs the pipeline's own stages on each image, so the
labels are exactly what ``unetpipe preprocess``, ``predict`` and ``segment``
give by hand with the same settings:

1. :func:`unetpipe.stages.preprocess.preprocess_image`, with the percentiles
   and clipping the model was trained with (not the config's), into a hidden
   work folder;
2. :func:`unetpipe.stages.predict.predict_store`, block by block;
3. :func:`unetpipe.stages.segment.segment_store`, with the model's tuned
   settings where the caller leaves a setting unset;
4. :func:`unetpipe.stages.measure.measure_store` and
   :func:`~unetpipe.stages.measure.write_table`.

The outputs of image ``NAME`` below the output folder ``OUT``::

    OUT/labels/NAME.ome.zarr          instance labels
    OUT/tables/NAME.csv               one row per object
    OUT/labels/NAME.tif               with tiff=True
    OUT/probabilities/NAME.ome.zarr   with probabilities=True
    OUT/labels/.NAME.apply.json       how they were made (model, settings, input)
    OUT/.work/                        preprocessed stores (and probabilities) until NAME is done

Each stage is chunked and resumable, so memory is bounded by the blocks and a
killed run started again with the same arguments skips the finished images
and resumes the unfinished one where its stages stopped.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, InputError
from ..core.layout import SamplePaths, sample_paths
from ..inputs.samples import sample_name
from ..io import ngff

log = logging.getLogger("unetpipe")

IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr")
"""What a folder given as input contributes (``.ome.tif`` and ``.ome.zarr`` included)."""

WORK_DIR = ".work"
"""The hidden folder below the output folder that holds the intermediate stores."""

DEFAULT_PERCENTILES = (1.0, 99.8)
"""Used (with a warning) for a model that records no normalisation."""

PREDICT_SETTINGS = ("block", "halo", "halo_tolerance", "batch_size", "device", "bf16", "tta",
                    "skip_empty", "dtype")
"""The keywords of :func:`unetpipe.stages.predict.predict_store` a caller may set."""


@dataclass(frozen=True)
class ImageResult:
    """What :func:`apply_images` made of one image.

    Attributes
    ----------
    name : str
        Sample name (file name without extension).
    source : str
        The input image.
    labels, table : str
        The label store and the object table.
    tiff, probabilities : str or None
        The labels as TIFF and the probability store, when asked for.
    objects : int
        Objects in the labels.
    shape : tuple of int
        Spatial shape, ``(Y, X)`` or ``(Z, Y, X)``.
    seconds : float
        Wall time spent on the image in this run.
    skipped : bool
        Every output was there from an earlier run made the same way.
    """

    name: str
    source: str
    labels: str
    table: str
    tiff: str | None
    probabilities: str | None
    objects: int
    shape: tuple[int, ...]
    seconds: float
    skipped: bool = False


@dataclass(frozen=True)
class ImageFailure:
    """An input that was skipped: its path and the problem, as one line."""

    source: str
    message: str


@dataclass
class ApplyResult:
    """What :func:`apply_images` did: one entry per input image."""

    images: list[ImageResult] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def done(self) -> list[ImageResult]:
        """The images segmented in this run."""
        return [r for r in self.images if not r.skipped]

    @property
    def skipped(self) -> list[ImageResult]:
        """The images whose outputs were there already."""
        return [r for r in self.images if r.skipped]


# --- what to run on ------------------------------------------------------------------


def _is_zarr(path: str) -> bool:
    """A Zarr store (an image), as opposed to a folder of images."""
    if path.rstrip("/\\").lower().endswith(".zarr"):
        return True
    return any(os.path.exists(os.path.join(path, name))
               for name in ("zarr.json", ".zarray", ".zgroup"))


def _hidden(path: str) -> bool:
    return os.path.basename(path.rstrip("/\\")).startswith(".")


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[tuple[str, str]]:
    """The images named by files, globs and folders, with their sample names.

    Parameters
    ----------
    inputs : iterable of str or os.PathLike
        Image files, Zarr stores, glob patterns, or folders. A folder
        contributes its ``*.tif``, ``*.tiff``, ``*.zarr`` and ``*.ome.zarr``
        entries (not those of its subfolders; hidden ones are left out); a
        folder that is a Zarr store is one image.

    Returns
    -------
    list of (str, str)
        ``(sample name, path)`` in the order given (a folder's entries and a
        glob's matches sorted); a path given twice counts once.

    Raises
    ------
    InputError
        A path that does not exist, a glob that matches no image, a folder
        without images, or two images with the same sample name (their
        outputs would collide).
    """
    found: list[str] = []
    for item in ([inputs] if isinstance(inputs, str | os.PathLike) else inputs):
        item = os.fspath(item)
        if os.path.isdir(item) and not _is_zarr(item):
            entries = sorted(e for e in os.listdir(item)
                             if not e.startswith(".") and e.lower().endswith(IMAGE_SUFFIXES))
            if not entries:
                raise InputError(item, "holds no images (*.tif, *.tiff, *.zarr, *.ome.zarr)")
            found += [os.path.join(item, e) for e in entries]
        elif os.path.exists(item):
            found.append(item)
        elif any(c in item for c in "*?["):
            matches = sorted(p for p in glob.glob(item) if not _hidden(p)
                             and (os.path.isfile(p) or _is_zarr(p)))
            if not matches:
                raise InputError(item, "the pattern matches no image")
            found += matches
        else:
            raise InputError(item, "no such file or folder")
    images: list[tuple[str, str]] = []
    seen_paths: set[str] = set()
    by_name: dict[str, str] = {}
    for path in found:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue
        seen_paths.add(real)
        name = sample_name(path)
        if name in by_name:
            raise InputError(path, f"has the sample name {name!r} of {by_name[name]} as well; "
                                   "the outputs are named by sample, so they would collide: "
                                   "rename one, or apply them separately")
        by_name[name] = path
        images.append((name, path))
    return images


# --- the model -------------------------------------------------------------------------


def model_normalisation(ckpt: Mapping) -> tuple[tuple[float, float], bool]:
    """The percentiles and clipping a model's training images were preprocessed with.

    Parameters
    ----------
    ckpt : mapping
        A loaded checkpoint (:func:`unetpipe.nn.models.load_checkpoint`).

    Returns
    -------
    (float, float), bool
        Low and high percentile; clip. :data:`DEFAULT_PERCENTILES` and no
        clipping (with a warning) when the model records neither.

    Examples
    --------
    >>> model_normalisation({"normalization": {"percentiles": [2, 99.5], "clip": True}})
    ((2.0, 99.5), True)
    """
    for source in (ckpt.get("normalization"), (ckpt.get("config") or {}).get("preprocess")):
        if isinstance(source, Mapping) and source.get("percentiles"):
            low, high = source["percentiles"]
            return (float(low), float(high)), bool(source.get("clip") or False)
    log.warning("apply: the model records no normalisation; using the percentiles %s and no "
                "clipping", list(DEFAULT_PERCENTILES))
    return DEFAULT_PERCENTILES, False


def _check_lengths(settings: Mapping, stage: str, ndim: int, model: str) -> None:
    for key in ("block", "halo"):
        value = settings.get(key)
        if value is not None and not isinstance(value, str) and len(value) != ndim:
            raise ConfigError(f"config key '{stage}.{key}': {list(value)} has {len(value)} "
                              f"values but the model {model} segments {ndim}D images")


def _check_fits(image, *, cfg: Mapping, channels, model: str) -> None:
    """Raise InputError naming the image when it does not fit the model."""
    ndim, want = int(cfg["ndim"]), int(cfg["in_channels"])
    shape = tuple(image.data.shape)
    if image.ndim != ndim:
        raise InputError(image.path, f"is {image.ndim}D (axes {image.axes}, shape {shape}), "
                                     f"but the model {model} segments "
                                     f"{'3D stacks' if ndim == 3 else '2D images'}")
    have = len(channels) if channels is not None else (
        shape[0] if "c" in image.axes else 1)
    if have != want:
        raise InputError(image.path, f"has {have} channel(s) (axes {image.axes}, shape {shape}), "
                                     f"but the model {model} was trained on {want} (pick them "
                                     "with --channels)")


# --- one image --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What every image of a run shares."""

    model: str
    cfg: dict
    percentiles: tuple[float, float]
    clip: bool
    params: object  # SegmentParams
    settings: str  # where each segment setting came from, as one line
    segment: dict  # block, halo
    data: dict  # axes, spacing, channels
    predict: dict
    identity: dict  # what the outputs depend on, besides the input
    out: Path
    work: Path
    tiff: bool
    probabilities: bool
    keep_work: bool
    execution: object  # Execution
    progress: bool
    ngff_version: str = "0.4"


def _record_path(final: SamplePaths) -> Path:
    return final.labels.parent / f".{final.sample}.apply.json"


def _read_record(path: Path) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(path: Path, record: Mapping) -> None:
    from ..io.images import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        _remove(path)


def _changed(old: Mapping | None, new: Mapping) -> str:
    if not old:
        return "no record of how they were made"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "other " + ", ".join(keys)


def _labels_info(path: Path) -> tuple[int, tuple[int, ...]]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return int(dict(root.attrs["unetpipe"]).get("objects", 0)), tuple(root["0"].shape)


def write_labels_tiff(labels: str | os.PathLike, out: str | os.PathLike, *,
                      progress: bool = False) -> Path:
    """Write a label store as a tiled OME-TIFF, one tile at a time.

    Parameters
    ----------
    labels : path
        Label store (OME-Zarr, labels at array ``0``, axes ``(z)yx``).
    out : path
        Destination ``.tif``; written atomically. Tiles follow the store's
        chunks (rounded up to TIFF's multiple of 16), so memory holds one
        tile, whatever the image's size; the physical pixel size is kept.
    progress : bool
        Show a progress bar over the planes.

    Returns
    -------
    pathlib.Path
    """
    import numpy as np
    import tifffile
    import zarr

    from ..core.progress import bar
    from ..io.images import atomic_output, read_labels

    meta = read_labels(labels)
    array = zarr.open_array(os.path.join(os.fspath(labels), "0"), mode="r")
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    tile = tuple(16 * math.ceil(min(c, n) / 16)
                 for c, n in zip(array.chunks[-2:], shape[-2:], strict=True))
    planes = list(np.ndindex(*shape[:-2]))

    def tiles():
        with bar(total=len(planes), desc="tiff", unit="plane", disable=not progress,
                 leave=False) as pbar:
            for plane in planes:
                for y in range(0, shape[-2], tile[0]):
                    for x in range(0, shape[-1], tile[1]):
                        piece = array[(*plane, slice(y, y + tile[0]), slice(x, x + tile[1]))]
                        padded = np.zeros(tile, dtype)
                        padded[:piece.shape[0], :piece.shape[1]] = piece
                        yield padded
                pbar.update(1)

    axes = "ZYX"[-len(shape):]
    metadata: dict = {"axes": axes}
    if meta.unit is not None:
        for letter, value in zip(axes, meta.spacing, strict=True):
            metadata[f"PhysicalSize{letter}"] = float(value)
            metadata[f"PhysicalSize{letter}Unit"] = "µm"
    big = math.prod(shape) * dtype.itemsize > 2**32 - 2**26
    with atomic_output(out) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=shape, dtype=dtype, tile=tile, ome=True,
                         metadata=metadata, compression="zlib", bigtiff=big)
    return Path(os.fspath(out))


def _apply_one(name: str, source: str, plan: _Plan, *, position: str) -> ImageResult:
    """Preprocess, predict, segment and measure one image, skipping what is done."""
    from ..io.images import read_image
    from ..io.outputs import check_output
    from ..io.resume import input_signature, partial_path

    t0 = time.perf_counter()
    final = sample_paths(plan.out, name)
    scratch = sample_paths(plan.work, name)
    probs = final.probabilities if plan.probabilities else scratch.probabilities
    tiff = final.labels.parent / f"{name}.tif"
    ours = [(final.labels, "labels"), (final.table, "table"), (final.probabilities, "probabilities")]
    for path, kind in ours:  # never replace, nor remove, what unetpipe did not make
        if os.path.lexists(path):
            check_output(path, kind=kind, inputs=[source, plan.model])
    wanted = [final.labels, final.table] + ([probs] if plan.probabilities else []) \
        + ([tiff] if plan.tiff else [])

    identity = {**plan.identity, "input": os.path.abspath(source),
                "input_signature": input_signature(source)}
    identity = json.loads(json.dumps(identity))
    record = _record_path(final)
    done = _read_record(record)
    work_record = plan.work / f"{name}.json"
    work = (scratch.image, scratch.probabilities, partial_path(scratch.probabilities), work_record)
    if done == identity and all(os.path.lexists(p) for p in wanted):
        if not plan.keep_work:
            _remove_all(work)
        objects, shape = _labels_info(final.labels)
        return ImageResult(name=name, source=source, labels=os.fspath(final.labels),
                           table=os.fspath(final.table),
                           tiff=os.fspath(tiff) if plan.tiff else None,
                           probabilities=os.fspath(probs) if plan.probabilities else None,
                           objects=objects, shape=shape, seconds=time.perf_counter() - t0,
                           skipped=True)

    image = read_image(source, axes=plan.data["axes"])
    _check_fits(image, cfg=plan.cfg, channels=plan.data["channels"], model=plan.model)
    log.info("apply: %s %s: settings %s", position, name, plan.settings)

    # Earlier work counts only when it was made the way this run makes it: the
    # work folder's record says so for unfinished work, the image's record for
    # finished outputs. A run writes the work record before anything else, and
    # removes the image's record while outputs made another way remain.
    if _read_record(work_record) != identity:
        _remove_all((scratch.image, scratch.probabilities, work_record))
        if done != identity:
            stale = [p for p in (final.labels, final.table, tiff, final.probabilities)
                     if os.path.lexists(p)]
            if stale:
                log.info("apply: %s: %s made before with %s; making them again", name,
                         ", ".join(os.fspath(p) for p in stale), _changed(done, identity))
            _remove_all((record, *stale))
        _write_record(work_record, identity)
    try:
        _run_stages(name, image, plan, final=final, scratch=scratch, probs=probs, tiff=tiff)
    except InputError:
        if not (scratch.image.exists() or partial_path(probs).exists() or probs.exists()):
            _remove(work_record)  # nothing to resume
        raise
    _write_record(record, identity)
    if not plan.keep_work:
        _remove_all(work)
    objects, shape = _labels_info(final.labels)
    return ImageResult(name=name, source=source, labels=os.fspath(final.labels),
                       table=os.fspath(final.table), tiff=os.fspath(tiff) if plan.tiff else None,
                       probabilities=os.fspath(probs) if plan.probabilities else None,
                       objects=objects, shape=shape, seconds=time.perf_counter() - t0)


def _run_stages(name: str, image, plan: _Plan, *, final: SamplePaths, scratch: SamplePaths,
                probs: Path, tiff: Path) -> None:
    """The stages whose outputs are missing, and what they need."""
    def preprocessed() -> str:
        from .preprocess import preprocess_image

        if not scratch.image.is_dir():
            preprocess_image(image, scratch.image, spacing=plan.data["spacing"],
                             channels=plan.data["channels"], percentiles=plan.percentiles,
                             clip=plan.clip, pyramid_levels=0, name=name,
                             ngff_version=plan.ngff_version, progress=plan.progress)
        return os.fspath(scratch.image)

    need_table = not final.table.is_file()
    if not probs.is_dir() and (not final.labels.is_dir() or need_table or plan.probabilities):
        from .predict import predict_store

        predict_store(plan.model, preprocessed(), probs, execution=plan.execution,
                      ngff_version=plan.ngff_version, **plan.predict)
    if not final.labels.is_dir():
        from .segment import segment_store

        # the image the labels name: the probabilities where they are kept, the
        # preprocessed image where the work is kept, else none (removed after)
        source = probs if plan.probabilities else scratch.image if plan.keep_work else None
        segment_store(probs, final.labels, params=plan.params, block=plan.segment["block"],
                      halo=plan.segment["halo"], execution=plan.execution,
                      ngff_version=plan.ngff_version, source=source)
    if need_table:
        from .measure import measure_store, write_table

        table = measure_store(final.labels, image_path=preprocessed(),
                              probabilities_path=probs, threads=plan.execution.threads,
                              progress=plan.progress)
        write_table(table, final.table)
    if plan.tiff and not tiff.is_file():
        write_labels_tiff(final.labels, tiff, progress=plan.progress)


# --- the run ------------------------------------------------------------------------------


def apply_images(model: str | os.PathLike, inputs: Iterable[str | os.PathLike] | str,
                 out: str | os.PathLike, *, section: Mapping | None = None,
                 predict: Mapping | None = None, data: Mapping | None = None,
                 tiff: bool = False, probabilities: bool = False, keep_work: bool = False,
                 execution=None, progress: bool = True,
                 ngff_version: str | None = None) -> ApplyResult:
    """Segment raw images with a trained model: labels and a table per image.

    Parameters
    ----------
    model : path or str
        A checkpoint (``.pt``), a bioimage.io package written by ``unetpipe
        export``, or ``"starter"`` (:func:`unetpipe.nn.models.resolve_model`).
    inputs : path or iterable of paths
        Image files (TIFF, Zarr, OME-Zarr; 2D or 3D), glob patterns or
        folders; see :func:`collect_images`.
    out : path
        Output folder; see the module's docstring for what goes where. It may
        not be an input, nor hold one.
    section : mapping, optional
        Segmentation settings (the config's ``segment`` section or part of
        it: ``method`` ... ``fill_holes``, ``block``, ``halo``). A value set
        (not None) wins; the rest take the model's tuned settings, else the
        built-in defaults (:func:`unetpipe.stages.instances.resolve_params`).
    predict : mapping, optional
        Keywords of :func:`unetpipe.stages.predict.predict_store` (``block``,
        ``halo``, ``batch_size``, ``device`` (default ``"auto"``), ``bf16``,
        ``tta``, ``skip_empty``, ``dtype``).
    data : mapping, optional
        ``axes``, ``spacing`` and ``channels`` for inputs whose metadata are
        missing or wrong (the config's ``data`` keys); None = from the files.
    tiff : bool
        Also write the labels as ``labels/NAME.tif``.
    probabilities : bool
        Keep the class probabilities as ``probabilities/NAME.ome.zarr``.
    keep_work : bool
        Keep the preprocessed stores (``.work/``) of finished images.
    execution : Execution, optional
        Threads, scheduler and resume for predict and segment
        (:class:`unetpipe.core.cluster.Execution`); default all cores,
        Dask's threaded scheduler, resume, and ``progress``.
    progress : bool
        Progress bars of preprocessing, measuring and the TIFF.
    ngff_version : str, optional
        NGFF version of the stores written, ``"0.4"`` or ``"0.5"``
        (:mod:`unetpipe.io.ngff`; its default when None).

    Returns
    -------
    ApplyResult
        Per image its outputs, objects, shape and time; and the inputs that
        failed, each with a one-line message (also logged as an error).

    Raises
    ------
    InputError
        The model cannot be used, an input argument names nothing, two
        images share a sample name, or ``out`` is, or holds, an input; or
        another run is writing to ``out``. Nothing is written then.
    ConfigError
        A bad setting.

    Notes
    -----
    An image is skipped when all its outputs exist and its record says they
    were made from the same input (path and file signature), model (sha256)
    and settings. Outputs made another way are made again (unetpipe's own
    outputs only; anything else in the way fails that image). An image that
    fails (unreadable, corrupt, wrong dimensionality or channels for the
    model) does not stop the run.
    """
    from ..core.cluster import Execution
    from ..io.outputs import check_inputs, output_lock
    from ..nn.models import load_checkpoint, resolve_model
    from .tune import read_tuned, segment_settings

    t0 = time.perf_counter()
    run = execution if execution is not None else Execution(progress=progress)
    run.check("predict")
    model_path = resolve_model(model)
    ckpt = load_checkpoint(model_path)
    cfg = dict(ckpt["model"]["config"])
    ndim = int(cfg["ndim"])
    percentiles, clip = model_normalisation(ckpt)
    tuned = read_tuned(model_path)
    section = dict(section or {})
    params, settings = segment_settings(section, tuned, model_path)
    predict = {k: v for k, v in dict(predict or {}).items() if v is not None}
    unknown = sorted(set(predict) - set(PREDICT_SETTINGS))
    if unknown:
        raise ConfigError(f"config key 'predict.{unknown[0]}' is not a setting apply takes "
                          f"(it takes {', '.join(PREDICT_SETTINGS)})")
    predict.setdefault("device", "auto")
    segment = {"block": section.get("block"), "halo": section.get("halo")}
    _check_lengths(predict, "predict", ndim, model_path)
    _check_lengths(segment, "segment", ndim, model_path)
    data = {k: (data or {}).get(k) for k in ("axes", "spacing", "channels")}
    if data["spacing"] is not None and len(data["spacing"]) != ndim:
        raise ConfigError(f"config key 'data.spacing': {list(data['spacing'])} has "
                          f"{len(data['spacing'])} values but the model {model_path} segments "
                          f"{ndim}D images")

    images = collect_images(inputs)
    out = Path(os.fspath(out))
    check_inputs(out, [path for _, path in images] + [model_path])
    from .predict import model_sha256

    try:
        version = ngff.check_version(ngff_version)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    identity = {
        "model_sha256": model_sha256(model_path),
        "ngff_version": version,
        "normalisation": {"percentiles": list(percentiles), "clip": clip},
        "data": data,
        "predict": {k: v for k, v in predict.items() if k != "batch_size"},
        "segment": {**asdict(params), **segment},
    }
    plan = _Plan(model=model_path, cfg=cfg, percentiles=percentiles, clip=clip, params=params,
                 settings=settings, segment=segment, data=data, predict=predict,
                 identity=identity, out=out, work=out / WORK_DIR, tiff=tiff,
                 probabilities=probabilities, keep_work=keep_work, execution=run,
                 progress=progress, ngff_version=version)
    log.info("apply: %d image(s) with %s -> %s (normalised by the model's percentiles %s%s)",
             len(images), model_path, out, list(percentiles), ", clipped" if clip else "")
    result = ApplyResult()
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        for k, (name, source) in enumerate(images, 1):
            position = f"[{k}/{len(images)}]"
            try:
                done = _apply_one(name, source, plan, position=position)
            except InputError as e:
                problem = e.problem if e.path == source else str(e)
                result.failures.append(ImageFailure(source, problem))
                log.error("apply: %s error: %s: %s; image skipped", position, source, problem)
                continue
            result.images.append(done)
            shape = "x".join(map(str, done.shape))
            if done.skipped:
                log.info("apply: %s %s: done before (%d objects, shape %s)", position, name,
                         done.objects, shape)
            else:
                log.info("apply: %s %s: %d objects, shape %s, in %.1f s -> %s", position, name,
                         done.objects, shape, done.seconds, done.labels)
        for folder in (plan.work / "preprocessed", plan.work / "probabilities", plan.work):
            try:
                folder.rmdir()  # only when empty: unfinished work stays
            except OSError:
                pass
    result.seconds = time.perf_counter() - t0
    return result
