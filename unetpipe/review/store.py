"""The label store under review: reading by regions, journaled saves, versions.

With :mod:`unetpipe.review.edits` (pure edits), :mod:`unetpipe.review.queue`
(what to look at) and :mod:`unetpipe.review.curate` (back into training),
this holds everything the napari review widget does that is not user
interface, so that it can be tested and scripted without Qt:

- :class:`LabelStore` reads a label store whole or by regions snapped to its
  chunk grid (for stacks too big to edit in memory);
- :func:`save_region` writes an edited region back, rewriting only the chunk
  files whose content changed, through a journal, and keeps the previous
  content of those chunks as a version.

Saving (the journal)
--------------------
A save never writes into the store directly. It first builds, in the hidden
folder ``.{labels}.journal`` beside the store, the new content of every file
it will replace (changed chunk files, encoded by Zarr itself through a
staging copy of the array's metadata, the root's attributes file
(``zarr.json``, or ``.zattrs`` in an NGFF 0.4 store) with updated attributes,
the measurement table and ``{sample}.review.json``) and a copy of their
current content, fsyncs them, and then writes ``journal.json``, the list
of files. Only then are the new files renamed into place, one atomic
``os.replace`` each. Finally the copies of the old content become the version
``{sample}.versions/{time}/`` and the journal is removed. An interrupted save
is settled the next time the store is opened or saved (:func:`recover`):
without ``journal.json`` nothing was touched and the journal is dropped (roll
back); with it, the remaining renames are done (roll forward; each step can
be repeated; a staged file that is neither in the journal nor in place is an
error, never skipped). Either way the store holds the old or the new version
of every file, never a mix.

The journal, the versions' ``version.json`` and ``review.json`` are read back
as input (a results folder may come from anyone): each must have the shape
this module writes, and every path in them must, links resolved, stay inside
the label store, be its ``review.json`` or the sample's table (staged files:
inside the journal's ``new/``; version names: one plain folder name). A
journal that fails is renamed ``.{labels}.journal.bad-{time}`` and nothing of
it is applied; a version that fails cannot be restored; a ``review.json``
that fails is renamed ``{sample}.review.{time}.bad.json`` and a new one begun.

One save at a time: saving, restoring, recording decisions and settling an
interrupted save hold the store's lock (:func:`store_lock`: a lock per store
in the process and ``fcntl.flock`` on ``labels/.{sample}.lock`` across
processes), so a save in progress is waited for, never taken for a crashed
one. Its journal is never removed or recreated by another save.

A new segmentation starts a new review: ``review.json`` and every version
record the store's identity (:func:`_identity`, which the workflow's rewrite
changes and saves do not). When the store no longer matches, the old record
and versions are moved aside as ``{sample}.review.{time}.stale.json`` and
``{sample}.versions.{time}.stale``. Versions are undone in order: only the
latest save can be restored, then the one before (:func:`restorable_versions`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import threading
import time as _time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.boxes import chunk_indices, intersect, shift
from ..core.errors import InputError
from ..core.layout import SamplePaths, sample_paths
from ..io import ngff
from .edits import changed_ids
from .queue import object_box, snap_box, union_box

log = logging.getLogger(__name__)

#: Label stores up to this many bytes are edited whole; larger ones by regions.
WHOLE_MAX_BYTES = 256 * 2**20
#: Pixels of context loaded around an object in region mode (before snapping).
DEFAULT_MARGIN = 16
JOURNAL_FILE = "journal.json"
#: Seconds to wait for another save of the same store (another thread or process).
LOCK_TIMEOUT = 30.0
ACTIONS = ("delete", "merge", "split", "paint", "accept", "reject", "restore")


# --- paths --------------------------------------------------------------------


# --- pure edit functions ---------------------------------------------------------


# --- the review queue --------------------------------------------------------------


# --- the label store ------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LabelStore:
    """An OME-Zarr label store opened for review.

    Opening settles an interrupted save first (:func:`recover`).

    Attributes
    ----------
    paths : SamplePaths
    shape : tuple of int
        Spatial shape of level 0.
    chunks : tuple of int
        Chunk shape of level 0 as read (the measurement blocks).
    storage_chunks : tuple of int
        Shape of one chunk *file* (the shard shape of a sharded array).
    dtype : numpy.dtype
    spacing : tuple of float
        Pixel size per axis (NGFF scale of level 0).
    unit : str or None
    levels : list of (str, tuple of int)
        Every pyramid level's array path and its subsampling factor per axis.
    recovered : str or None
        What :func:`recover` did when opening ("rolled forward", "rolled back").
    identity : str or None
        The store's identity when opened; saving refuses when the workflow has
        written the store again since.
    set_aside : pathlib.Path or None
        Where the review record of an earlier segmentation was moved on opening.
    """

    paths: SamplePaths
    shape: tuple[int, ...] = ()
    chunks: tuple[int, ...] = ()
    storage_chunks: tuple[int, ...] = ()
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint32))
    spacing: tuple[float, ...] = ()
    unit: str | None = None
    levels: list = field(default_factory=list)
    recovered: str | None = None
    identity: str | None = None
    set_aside: Path | None = None

    @classmethod
    def open(cls, results: str | os.PathLike, sample: str) -> LabelStore:
        """Open the label store of ``sample`` below ``results``."""
        import zarr

        from ..io.images import read_labels

        paths = sample_paths(results, sample)
        if not paths.labels.is_dir():
            raise InputError(os.fspath(paths.labels), "label store not found")
        with store_lock(paths):
            recovered = _recover_journal(paths)
            set_aside = _set_aside_stale(paths)
            identity = _identity(paths)
        root = zarr.open_group(str(paths.labels), mode="r")
        ms = ngff.metadata(dict(root.attrs))["multiscales"][0]
        for d in ms["datasets"]:  # input: arrays are read and saved below these paths
            try:
                _inside(paths.labels, str(d["path"]), "multiscales dataset path")
            except _Untrusted as e:
                raise InputError(os.fspath(paths.labels), str(e)) from None
        img = read_labels(paths.labels)
        scales = []
        for d in ms["datasets"]:
            scale = next((t["scale"] for t in d.get("coordinateTransformations", [])
                          if t.get("type") == "scale"), [1.0] * len(img.spatial_shape))
            scales.append((d["path"], scale))
        base = np.asarray(scales[0][1], float)
        levels = [(p, tuple(round(float(f)) for f in np.asarray(s, float) / base))
                  for p, s in scales]
        arr = root[levels[0][0]]
        return cls(paths=paths, shape=tuple(img.spatial_shape), chunks=tuple(arr.chunks),
                   storage_chunks=_storage_chunks(arr),
                   dtype=np.dtype(arr.dtype), spacing=tuple(img.spacing), unit=img.unit,
                   levels=levels, recovered=recovered, identity=identity,
                   set_aside=set_aside)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def fits_whole(self, max_bytes: int = WHOLE_MAX_BYTES) -> bool:
        """Whether the whole label image is at most ``max_bytes`` (edit it whole)."""
        return self.nbytes <= max_bytes

    def array(self, level: int = 0):
        """The Zarr array of a level, for reading."""
        import zarr

        return zarr.open_array(str(self.paths.labels / self.levels[level][0]), mode="r")

    def read(self, box: Sequence[slice] | None = None) -> np.ndarray:
        """Level-0 labels in ``box`` (default: all of them), as an ndarray."""
        box = tuple(slice(0, n) for n in self.shape) if box is None else tuple(box)
        return np.asarray(self.array()[box])

    def region_for(self, boxes: Iterable[Sequence[slice]], *,
                   margin: int = DEFAULT_MARGIN) -> tuple[slice, ...]:
        """The region to load for editing objects in ``boxes``: their union, grown by
        ``margin``, snapped outwards to the storage chunk grid."""
        return snap_box(union_box(boxes), shape=self.shape, chunks=self.storage_chunks,
                        margin=margin)

    def max_id(self) -> int:
        """The largest id in the store (from its attributes, else computed chunk by chunk)."""
        import zarr

        attrs = dict(zarr.open_group(str(self.paths.labels), mode="r").attrs.get("unetpipe", {}))
        if "max_id" in attrs:
            return int(attrs["max_id"])
        if "objects" in attrs and not attrs.get("edited"):
            return int(attrs["objects"])
        import dask.array as da

        return int(da.from_zarr(self.array()).max().compute())


class JournalError(RuntimeError):
    """A save's journal is not what the save left (removed, or files missing from it)."""


class StoreBusy(InputError):
    """Another thread or process is saving the same label store."""


# --- the store lock -------------------------------------------------------------------

try:  # POSIX: advisory locks across processes
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows: in-process lock only
    _fcntl = None


class _LockState:
    def __init__(self):
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


_LOCKS: dict[str, _LockState] = {}
_LOCKS_GUARD = threading.Lock()


def _flock(path: Path, deadline: float) -> int | None:
    """Open ``path`` (created if needed) and lock it exclusively across processes."""
    if _fcntl is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if _time.monotonic() >= deadline:
                    raise StoreBusy(path, "another process is saving this label store; "
                                          "try again when it has finished") from None
                _time.sleep(0.02)
            except OSError as e:  # file systems without flock (some network mounts)
                log.warning("%s: cannot lock across processes (%s)", path, e)
                os.close(fd)
                return None
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


@contextlib.contextmanager
def store_lock(paths: SamplePaths, timeout: float | None = None):
    """Hold the lock of ``paths``' label store: one save at a time.

    A :class:`threading.RLock` per store in this process (re-entrant: the
    functions below call each other) and an ``fcntl.flock`` on the file
    ``labels/.{sample}.lock`` across processes. Waits up to ``timeout``
    seconds (default :data:`LOCK_TIMEOUT`), then raises :class:`StoreBusy`.
    """
    folder = paths.lock.parent
    if not folder.is_dir():
        raise InputError(os.fspath(paths.labels), "label store not found")
    deadline = _time.monotonic() + (LOCK_TIMEOUT if timeout is None else float(timeout))
    key = os.path.realpath(paths.lock)
    with _LOCKS_GUARD:
        state = _LOCKS.setdefault(key, _LockState())
    if not state.rlock.acquire(timeout=max(0.0, deadline - _time.monotonic())):
        raise StoreBusy(paths.labels, "another save of this label store is running; try "
                                      "again when it has finished")
    try:
        if state.depth == 0:
            state.fd = _flock(paths.lock, deadline)
        state.depth += 1
        try:
            yield
        finally:
            state.depth -= 1
            if state.depth == 0 and state.fd is not None:
                fd, state.fd = state.fd, None
                with contextlib.suppress(OSError):
                    _fcntl.flock(fd, _fcntl.LOCK_UN)
                os.close(fd)
    finally:
        state.rlock.release()


# --- journal: stage, apply, recover ------------------------------------------------------


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, files in os.walk(folder):
        for f in files:
            _fsync(Path(dirpath) / f)
        _fsync(Path(dirpath))


def _write_json(path: Path, data) -> None:
    """Write JSON to ``path`` atomically and durably.

    The folder must exist: a missing one (e.g. a journal removed meanwhile)
    is an error, never silently created again.
    """
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


#: Keys of the store's ``unetpipe`` attributes that saves change.
_SAVE_KEYS = ("max_id", "edited", "table_stale", "last_version")


def _level0_meta(paths: SamplePaths) -> Path:
    """The metadata file of level 0's array (never rewritten by a save)."""
    path = "0"
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError,
                             _Untrusted):  # a path leading out of the store: not read
        attrs = ngff.read_attributes(ngff.attributes_file(paths.labels))
        found = str(ngff.metadata(attrs)["multiscales"][0]["datasets"][0]["path"])
        _inside(paths.labels, found, "multiscales dataset path")
        path = found
    return ngff.array_metadata_file(paths.labels / path)


def _storage_chunks(array) -> tuple[int, ...]:
    """The shape of what one file of ``array`` holds: a shard in format 3 (a
    chunk where there is no sharding), a chunk in format 2."""
    grid = getattr(array.metadata, "chunk_grid", None)
    return tuple(grid.chunk_shape) if grid is not None else tuple(array.metadata.chunks)


def _identity(paths: SamplePaths) -> str:
    """What tells this store from a new one written by a rerun of the workflow.

    The modification time of level 0's metadata file (``zarr.json`` or
    ``.zarray``; written once, when the workflow writes the store; saves only
    replace chunk files and the root's attributes) and a hash of its content and of the root's ``unetpipe``
    attributes other than those saves change. It survives saves, restores
    and copies that keep modification times; a rerun changes it.
    """
    meta = _level0_meta(paths)
    st = os.stat(meta)
    attrs = {}
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        root = ngff.read_attributes(ngff.attributes_file(paths.labels))
        attrs = {k: v for k, v in dict(root.get("unetpipe") or {}).items()
                 if k not in _SAVE_KEYS}
    h = hashlib.sha256(meta.read_bytes())
    h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
    return f"{st.st_mtime_ns}-{h.hexdigest()[:16]}"


def _legacy_identity(paths: SamplePaths) -> list[int]:
    """The identity journals of earlier unetpipe versions recorded."""
    st = os.stat(ngff.array_metadata_file(paths.labels / "0"))
    return [st.st_ino, st.st_mtime_ns]


def _same_store(paths: SamplePaths, recorded) -> bool:
    try:
        if isinstance(recorded, list):
            return recorded == _legacy_identity(paths)
        return recorded == _identity(paths)
    except OSError:
        return False


# --- untrusted records: journal.json, version.json, review.json -----------------------
#
# A results folder may come from elsewhere (copied, downloaded, shared), so the
# records read back from it are input, not our own state: every path taken from
# them must be a plain relative path that, symbolic links resolved, stays where
# saves write (the label store, its review record, the sample's table) or where
# they stage (the journal's ``new/``), and each record must have the shape the
# code below writes. A journal that fails is moved aside and never applied; a
# version that fails cannot be restored; a review record that fails is set
# aside and a new one started.


class _Untrusted(Exception):
    """A record read back from the results folder cannot be trusted (message: why)."""


_STR = {"type": "string"}
_IDENTITY = {"anyOf": [_STR, {"type": "null"},  # legacy journals: [inode, mtime_ns]
                       {"type": "array", "items": {"type": "integer"}}]}
_SCHEMAS = {
    "journal": {  # what _Journal.commit writes
        "type": "object", "required": ["version", "time", "entries"],
        "additionalProperties": False,
        "properties": {
            "version": _STR, "time": _STR, "identity": _IDENTITY, "restored": _STR,
            "entries": {"type": "array", "items": {
                "type": "object", "required": ["path", "new", "old"],
                "additionalProperties": False,
                "properties": {"path": _STR, "new": {"type": "boolean"},
                               "old": {"type": "boolean"},
                               "sha256": {"type": "string", "minLength": 64, "maxLength": 64,
                                          "pattern": "^[0-9a-f]*$"}}}}}},
    "version": {  # what _apply writes
        "type": "object", "required": ["version", "time", "files"],
        "additionalProperties": False,
        "properties": {
            "version": _STR, "time": _STR, "identity": _IDENTITY, "restored": _STR,
            "files": {"type": "array", "items": {
                "type": "object", "required": ["path", "existed"],
                "additionalProperties": False,
                "properties": {"path": _STR, "existed": {"type": "boolean"}}}}}},
    "review": {  # what read_review, record_decisions and saves write (other keys kept)
        "type": "object", "required": ["entries"],
        "properties": {
            "sample": _STR, "labels": _STR, "identity": _IDENTITY,
            "entries": {"type": "array", "items": {
                "type": "object", "required": ["action"],
                "properties": {"action": _STR,
                               "ids": {"type": "array", "items": {"type": "integer"}}}}}}},
}


def _check_schema(data, kind: str, name: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(_SCHEMAS[kind]).iter_errors(data))
    if error is not None:
        message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
        raise _Untrusted(f"{name} does not match the {kind} schema at {error.json_path}: "
                         f"{message}")


def _read_record(path: Path):
    """The JSON in ``path``, a regular file (never a link, a device or a folder)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise _Untrusted(f"{path.name} is not a regular file")
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise _Untrusted(f"{path.name} cannot be read ({e})") from None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _unlinked(path: Path) -> Path:
    """``path`` with its folders' links resolved, but not its own name."""
    return _real(path.parent) / path.name


def _plain_path(value: str, what: str, *, single: bool = False) -> str:
    """``value`` if it is a relative POSIX path with no ``..``, ``.`` or empty part
    (``single``: one part, a file or folder name), else :class:`_Untrusted`."""
    if not isinstance(value, str):
        raise _Untrusted(f"{what} {value!r} is not a string")
    parts = value.split("/")
    if (not value or "\x00" in value or "\\" in value or value.startswith("/")
            or any(p in ("", ".", "..") for p in parts) or (single and len(parts) > 1)):
        raise _Untrusted(f"{what} {value!r} is not a plain relative "
                         f"{'name' if single else 'path'}")
    return value


def _target(paths: SamplePaths, rel: str) -> Path:
    """The file ``rel`` (relative to the results folder) of a journal or version: a
    file inside the label store, its review record or the sample's table, links
    resolved; anything else is :class:`_Untrusted`."""
    _plain_path(rel, "path")
    target = paths.results / rel
    real = _real(target)
    labels = _real(paths.labels)
    if rel.startswith(_rel(paths, paths.labels) + "/"):
        if real != labels and real.is_relative_to(labels):
            return target
    elif rel in (_rel(paths, paths.review), _rel(paths, paths.table)):
        if real == _unlinked(target):
            return target
    raise _Untrusted(f"path {rel!r} leads outside the label store, its review record and "
                     f"its table (to {real})")


def _inside(folder: Path, rel: str, what: str) -> Path:
    """``folder / rel``, a plain path that stays inside ``folder`` with links resolved."""
    path = folder / _plain_path(rel, what)
    real, root = _real(path), _real(folder)
    if real == root or not real.is_relative_to(root):
        raise _Untrusted(f"{what} {rel!r} leads outside {folder.name} (to {real})")
    return path


def _own_folder(path: Path, what: str) -> None:
    """Refuse ``path`` when it is there but is a link (its parent folders may be) or
    no folder."""
    if os.path.lexists(path):
        if _real(path) != _unlinked(path):
            raise _Untrusted(f"{what} {path.name} is a link to {_real(path)}")
        if not path.is_dir():
            raise _Untrusted(f"{what} {path.name} is not a folder")


def _version_folder(paths: SamplePaths, version: str) -> Path:
    _plain_path(version, "version name", single=True)
    _own_folder(paths.versions, "the versions folder")
    folder = paths.versions / version
    _own_folder(folder, "the version folder")
    return folder


def _check_manifest(paths: SamplePaths, manifest) -> None:
    """Raise :class:`_Untrusted` unless ``manifest`` is a journal a save could have written."""
    _check_schema(manifest, "journal", JOURNAL_FILE)
    _version_folder(paths, manifest["version"])
    if "restored" in manifest:
        _plain_path(manifest["restored"], "restored version", single=True)
    for sub in ("new", "old"):
        _own_folder(paths.journal / sub, "the journal's folder")
    for entry in manifest["entries"]:
        _target(paths, entry["path"])
        if entry["new"]:
            _inside(paths.journal / "new", entry["path"], "staged file")


def _load_version(paths: SamplePaths, version: str) -> dict:
    """The record ``version.json`` of ``version``, checked (else :class:`_Untrusted`):
    its files lie in the label store (or are its review record or table) and the
    copies to restore are regular files inside the version's folder."""
    folder = _version_folder(paths, version)
    info = _read_record(folder / "version.json")
    _check_schema(info, "version", "version.json")
    if "restored" in info:
        _plain_path(info["restored"], "restored version", single=True)
    review = _rel(paths, paths.review)
    for f in info["files"]:
        _target(paths, f["path"])
        if f["existed"] and f["path"] != review:  # the review record is never put back
            if not _inside(folder, f["path"], "saved copy").is_file():
                raise _Untrusted(f"saved copy {f['path']!r} is missing or not a regular file")
    return info


def _load_review(paths: SamplePaths) -> dict | None:
    """``{sample}.review.json``, checked (else :class:`_Untrusted`); None when missing."""
    if not os.path.lexists(paths.review):
        return None
    review = _read_record(paths.review)
    _check_schema(review, "review", paths.review.name)
    return review


def _apply_one(src: Path | None, dest: Path) -> None:
    """Put one staged file in place (``src`` None: remove ``dest``). Repeatable."""
    if src is None:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)  # a missing staged file is an error, never skipped
    _fsync(dest.parent)


def _apply(paths: SamplePaths, manifest: dict) -> None:
    journal = paths.journal
    for entry in manifest["entries"]:
        src = journal / "new" / entry["path"] if entry["new"] else None
        dest = paths.results / entry["path"]
        if src is not None and not src.exists():
            # put in place by an earlier, interrupted attempt? Only if dest holds it
            digest = entry.get("sha256")
            if dest.exists() and (digest is None or _sha256(dest) == digest):
                continue
            raise JournalError(
                f"{journal}: the staged file {entry['path']} is missing and {dest} does not "
                "hold its content; the save cannot be completed. Move the journal folder "
                "aside and check the store")
        _apply_one(src, dest)
    old = journal / "old"
    version = paths.versions / manifest["version"]
    if old.exists():
        version.parent.mkdir(parents=True, exist_ok=True)
        if version.exists():  # an interrupted earlier attempt got this far
            shutil.rmtree(version)
        info = {"version": manifest["version"], "time": manifest["time"],
                "identity": manifest.get("identity"),
                "files": [{"path": e["path"], "existed": e["old"]} for e in manifest["entries"]]}
        if manifest.get("restored"):
            info["restored"] = manifest["restored"]
        _write_json(old / "version.json", info)
        os.replace(old, version)
        _fsync(version.parent)
    shutil.rmtree(journal)
    _fsync(journal.parent)


def _set_aside_journal(paths: SamplePaths, reason: str) -> str:
    """Move a journal that cannot be trusted aside, unapplied, for a person to look at."""
    aside = paths.journal.with_name(f"{paths.journal.name}.bad-{_stamp()}")
    os.rename(paths.journal, aside)
    _fsync(aside.parent)
    log.warning("%s: the journal of an interrupted save cannot be trusted (%s); it was NOT "
                "applied and was moved aside to %s", paths.labels, reason, aside.name)
    return "set aside"


def _recover_journal(paths: SamplePaths) -> str | None:
    journal = paths.journal
    if not os.path.lexists(journal):
        return None
    manifest_path = journal / JOURNAL_FILE
    try:  # journal.json and the paths in it are input: checked before anything is done
        _own_folder(journal, "the journal folder")
        manifest = _read_record(manifest_path) if os.path.lexists(manifest_path) else None
        if manifest is not None:
            _check_manifest(paths, manifest)
    except _Untrusted as e:
        return _set_aside_journal(paths, str(e))
    if manifest is None:
        shutil.rmtree(journal)
        _fsync(journal.parent)
        log.warning("%s: an interrupted save was rolled back", paths.labels)
        return "rolled back"
    if not _same_store(paths, manifest.get("identity")):
        shutil.rmtree(journal)
        _fsync(journal.parent)
        log.warning("%s: the store was rewritten since an interrupted save; dropped it",
                    paths.labels)
        return "discarded"
    _apply(paths, manifest)
    log.warning("%s: an interrupted save was completed", paths.labels)
    return "rolled forward"


def _stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _set_aside_stale(paths: SamplePaths) -> Path | None:
    """Move the review record and versions of an earlier segmentation aside.

    When the workflow has written the store again (e.g. after retraining),
    ``{sample}.review.json`` and ``{sample}.versions`` describe labels that
    are gone: their decisions name other objects and their versions would
    paste old chunks into the new labels. They are renamed to
    ``{sample}.review.{time}.stale.json`` and ``{sample}.versions.{time}.stale``
    (nothing is deleted) so that the new store starts with a clean record.

    Returns the new name of the review record (or of the versions folder),
    or None when nothing was stale.
    """
    if not paths.labels.is_dir():
        return None
    _set_aside_bad_review(paths)
    try:
        current = _identity(paths)
    except OSError:
        return None
    stale = False
    if paths.review.exists():
        recorded = (_load_review(paths) or {}).get("identity")  # checked just above
        if recorded is None:  # written by an earlier unetpipe: compare times
            stale = paths.review.stat().st_mtime_ns < _level0_meta(paths).stat().st_mtime_ns
        else:
            stale = recorded != current
    elif paths.versions.is_dir():
        for _, info in _versions(paths):
            recorded = info.get("identity")
            if recorded is not None and recorded != current:
                stale = True
                break
    if not stale:
        return None
    stamp = _stamp()
    moved = None
    folder = paths.review.parent
    if paths.versions.exists():
        moved = folder / f"{paths.sample}.versions.{stamp}.stale"
        os.replace(paths.versions, moved)
    if paths.review.exists():
        moved = folder / f"{paths.sample}.review.{stamp}.stale.json"
        os.replace(paths.review, moved)
    _fsync(folder)
    log.warning("%s: the store was written again since it was reviewed; the earlier review "
                "record and versions were moved aside (%s)", paths.labels, moved.name)
    return moved


def _set_aside_bad_review(paths: SamplePaths) -> None:
    """Move a review record that cannot be read aside (kept for a person to look at),
    so that the next save starts a new one instead of failing or overwriting it."""
    try:
        _load_review(paths)
    except _Untrusted as e:
        moved = paths.review.with_name(f"{paths.sample}.review.{_stamp()}.bad.json")
        os.rename(paths.review, moved)
        _fsync(moved.parent)
        log.warning("%s: the review record cannot be used (%s); it was moved aside to %s and "
                    "a new one is started", paths.labels, e, moved.name)


def recover(paths: SamplePaths) -> str | None:
    """Settle an interrupted save of ``paths``' label store.

    Runs under the store's lock (:func:`store_lock`), so a save still in
    progress in another thread or process is waited for, never mistaken for
    an interrupted one. Also moves the review record and versions of an
    earlier segmentation aside (:func:`_set_aside_stale`).

    Returns
    -------
    str or None
        ``"rolled back"`` (the save had not started changing the store: its
        journal is dropped), ``"rolled forward"`` (its remaining files were
        put in place), ``"discarded"`` (the store was rewritten since, e.g.
        by the workflow: the journal is dropped), ``"set aside"`` (the
        journal cannot be trusted: unreadable, not shaped as a save writes
        it, or naming paths outside the store; it is renamed to
        ``.{labels}.journal.bad-{time}`` and nothing of it is applied), or
        None (nothing to do).
    """
    with store_lock(paths):
        outcome = _recover_journal(paths)
        _set_aside_stale(paths)
    return outcome


@dataclass(frozen=True)
class SaveResult:
    """What :func:`save_region` wrote.

    Attributes
    ----------
    chunks : list of str
        Keys of the chunk files written or removed, relative to the store
        (e.g. ``"0/c/1/2"``), every level.
    ids : list of int
        Objects whose pixels changed.
    version : str or None
        Name of the version folder holding the previous content (None when
        nothing changed).
    table : str
        ``"updated"``, ``"stale"`` (could not be recomputed) or ``"missing"``.
    renamed : dict of int to int
        New ids given to painted objects whose id was taken elsewhere in the store.
    """

    chunks: list
    ids: list
    version: str | None
    table: str
    renamed: dict


def _rel(paths: SamplePaths, path: Path) -> str:
    return path.relative_to(paths.results).as_posix()


class _Journal:
    """Stages files for one save (call under :func:`store_lock`, after :func:`recover`)."""

    def __init__(self, paths: SamplePaths):
        self.paths = paths
        self.root = paths.journal
        if self.root.exists():
            raise JournalError(f"{self.root}: the journal of another save exists; it is "
                               "settled when the store is opened again")
        self.root.mkdir()  # its folder must exist: never recreated
        (self.root / "new").mkdir()
        (self.root / "old").mkdir()
        _fsync(self.root.parent)
        self.entries: list[dict] = []

    def _rel(self, target: Path) -> str:
        """``target`` relative to the results folder, if saves may write it."""
        rel = _rel(self.paths, target)
        try:  # e.g. a level path in the store's metadata, or a link, leading out of it
            _target(self.paths, rel)
        except _Untrusted as e:
            raise InputError(os.fspath(self.paths.labels), f"cannot save: {e}") from None
        return rel

    def stage_path(self, target: Path) -> Path:
        """Where the new content of ``target`` is staged."""
        return self.root / "new" / self._rel(target)

    def add(self, target: Path) -> None:
        """Record ``target``: its staged file (if any) replaces it; back up its content."""
        rel = self._rel(target)
        existed = target.exists()
        if existed:
            backup = self.root / "old" / rel
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(target, backup)
        staged = self.stage_path(target)
        entry = {"path": rel, "new": staged.exists(), "old": existed}
        if entry["new"]:
            entry["sha256"] = _sha256(staged)
        self.entries.append(entry)

    def commit(self, version: str, time: str, **extra) -> None:
        """Make the staged files durable, write the manifest, put them in place."""
        missing = [e["path"] for e in self.entries
                   if e["new"] and not self.stage_path(self.paths.results / e["path"]).exists()]
        if not (self.root / "old").is_dir() or missing:
            raise JournalError(f"{self.root}: the journal of this save was removed or changed "
                               "while it was written; nothing in the store was changed")
        _fsync_tree(self.root)
        _fsync(self.root.parent)
        manifest = {"version": version, "time": time, "identity": _identity(self.paths),
                    "entries": self.entries, **extra}
        try:  # what recover will accept
            _check_manifest(self.paths, manifest)
        except _Untrusted as e:
            raise JournalError(f"{self.root}: {e}; nothing in the store was changed") from None
        _write_json(self.root / JOURNAL_FILE, manifest)
        _fsync(self.root.parent)
        _apply(self.paths, manifest)


def _level_region(box: Sequence[slice], factor: Sequence[int],
                  shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """A level-0 box's pixels in a subsampled level (pixel i = level-0 pixel i * f):
    (box in the level, slices picking them from the level-0 box's array)."""
    lbox, pick = [], []
    for s, f, n in zip(box, factor, shape, strict=True):
        start, stop = -(-s.start // f), min(n, -(-s.stop // f))
        if start >= stop:
            return None
        lbox.append(slice(start, stop))
        pick.append(slice(start * f - s.start, (stop - 1) * f - s.start + 1, f))
    return tuple(lbox), tuple(pick)


def _changed_chunks(array, box: Sequence[slice], values: np.ndarray) -> dict:
    """Chunk files of ``array`` whose content changes when ``box`` gets ``values``:
    {grid index: (chunk box, new chunk content)}."""
    grid = tuple(array.metadata.chunk_grid.chunk_shape)
    out = {}
    for idx in chunk_indices(box, grid):
        cbox = tuple(slice(i * c, min(n, (i + 1) * c))
                     for i, c, n in zip(idx, grid, array.shape, strict=True))
        old = np.asarray(array[cbox])
        new = old.copy()
        inner = intersect(cbox, box)
        new[shift(inner, cbox)] = values[shift(inner, box)]
        if not np.array_equal(old, new):
            out[idx] = (cbox, new)
    return out


def _fresh_ids(store: LabelStore, old: np.ndarray, new: np.ndarray, known: np.ndarray,
               max_id: int, *, whole: bool = False) -> tuple[np.ndarray, dict]:
    """Give painted objects a new id when theirs is taken outside the region.

    An id that appears in ``new`` but not in ``old`` may belong to an object
    elsewhere in the store (napari's "new label" counts only the loaded
    region's ids) and would silently join it. Taken: every id up to the
    store's largest id ``max_id`` (whether or not the table knows it) and
    every id in ``known``. Nothing is taken outside a region that covers the
    whole image (``whole``).
    """
    added = np.setdiff1d(np.unique(new), np.unique(old))
    if whole:
        return new, {}
    known = np.asarray(known)
    clash = [int(i) for i in added if i != 0 and (int(i) <= max_id or i in known)]
    renamed = {}
    if clash:
        top = max(max_id, int(new.max()))
        if top + len(clash) > np.iinfo(new.dtype).max:
            raise ValueError(f"new ids up to {top + len(clash)} do not fit the store's "
                             f"{new.dtype}")
        new = new.copy()
        for i, old_id in enumerate(clash, start=1):
            renamed[old_id] = top + i
            new[(new == old_id) & (old != old_id)] = top + i
    return new, renamed


def _check_identity(store: LabelStore) -> None:
    if store.identity is not None and not _same_store(store.paths, store.identity):
        raise InputError(os.fspath(store.paths.labels), "the label store was written again "
                         "(by the workflow?) since it was opened; open it again")


def _new_version(paths: SamplePaths) -> tuple[str, str]:
    """A time stamp and a version name not used yet."""
    while True:
        time = _now()
        version = time.replace(":", "").replace("-", "")
        if not (paths.versions / version).exists():
            return time, version
        _time.sleep(1e-3)


def save_region(store: LabelStore, data, box: Sequence[slice] | None = None, *,
                actions: Sequence[Mapping] = (), update_table: bool = True,
                known_ids=None) -> SaveResult:
    """Write edited labels of a region back to the store, journaled and versioned.

    Parameters
    ----------
    store : LabelStore
        The open store.
    data : ndarray
        The edited labels of ``box``.
    box : sequence of slice, optional
        Where ``data`` lies in level 0 (default: the whole image).
    actions : sequence of mapping
        The edits made, each ``{"action": "delete"|"merge"|"split", "ids": [...]}``
        (for ``review.json``); changes they do not explain are recorded as
        ``"paint"``.
    update_table : bool
        Recompute the table rows of the changed objects (the rest of the
        table is kept); when that is not possible the table is marked stale.
    known_ids : array-like, optional
        Ids of the store's objects, to detect painted ids taken outside the
        region (default: the table's labels; ids up to the store's largest
        id count as taken anyway).

    Returns
    -------
    SaveResult

    Raises
    ------
    StoreBusy
        Another save of the store did not finish within :data:`LOCK_TIMEOUT`.
    InputError
        The store was written again since ``store`` was opened.

    Notes
    -----
    Only chunk files whose decoded content differs are rewritten, at every
    pyramid level (level k pixel i is level-0 pixel i * factor). All-background
    chunks are removed (Zarr's fill value), as Zarr itself does. The whole
    save runs under the store's lock (:func:`store_lock`).
    """
    paths = store.paths
    box = tuple(slice(0, n) for n in store.shape) if box is None else tuple(box)
    data = np.asarray(data)
    if data.shape != tuple(s.stop - s.start for s in box):
        raise ValueError(f"edited labels of shape {data.shape} do not fit the box {box}")
    if data.dtype.kind not in "ui" or (data.size and data.min() < 0):
        raise ValueError(f"labels must be non-negative integers, got {data.dtype}")
    if data.size and int(data.max()) > np.iinfo(store.dtype).max:  # before the cast wraps
        raise ValueError(f"id {int(data.max())} does not fit the store's {store.dtype}")
    data = data.astype(store.dtype, copy=False)
    with store_lock(paths):
        _recover_journal(paths)
        _set_aside_bad_review(paths)
        _check_identity(store)
        return _save_region(store, data, box, actions=actions, update_table=update_table,
                            known_ids=known_ids)


def _save_region(store: LabelStore, data: np.ndarray, box: tuple[slice, ...], *,
                 actions, update_table: bool, known_ids) -> SaveResult:
    import zarr

    paths = store.paths
    old = store.read(box)
    table = _read_table(paths)
    if known_ids is None:
        known_ids = table["label"].to_numpy(np.int64) if table is not None else np.zeros(0)
    max_id = store.max_id()
    whole = all(s.start == 0 and s.stop == n for s, n in zip(box, store.shape, strict=True))
    data, renamed = _fresh_ids(store, old, data, np.asarray(known_ids), max_id, whole=whole)
    ids = changed_ids(old, data)
    if ids.size == 0:
        return SaveResult([], [], None, "updated" if table is not None else "missing", {})
    time, version = _new_version(paths)
    journal = _Journal(paths)
    written: list[str] = []
    level0 = None
    for level, (path, factor) in enumerate(store.levels):
        array = store.array(level)
        if level == 0:
            region, values = box, data
        else:
            found = _level_region(box, factor, array.shape)
            if found is None:
                continue
            region, pick = found
            values = data[pick]
        changes = _changed_chunks(array, region, values)
        if level == 0:
            level0 = changes
        if not changes:
            continue
        # A copy of the array's metadata in the journal: Zarr encodes the new
        # chunks there with the store's codecs and chunk key encoding.
        meta = ngff.array_metadata_file(paths.labels / path)
        staged_meta = journal.stage_path(meta)
        staged_meta.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(meta, staged_meta)
        staging = zarr.open_array(str(staged_meta.parent), mode="r+")
        for idx, (cbox, content) in sorted(changes.items()):
            staging[cbox] = content
            key = f"{path}/{array.metadata.encode_chunk_key(idx)}"
            journal.add(paths.labels / key)
            written.append(key)
        staged_meta.unlink()
    # the measurement table: rows of the changed objects recomputed
    table_state = "missing"
    if table is not None:
        table_state = "stale"
        if update_table:
            try:
                new_table = _remeasure(store, table, ids, box, data, level0)
            except Exception as e:  # keep the edit; say the table is behind
                log.warning("%s: could not update the table (%s); marked stale", paths.table, e)
            else:
                from ..stages.measure import write_table

                staged = journal.stage_path(paths.table)
                staged.parent.mkdir(parents=True, exist_ok=True)
                write_table(new_table, staged)
                journal.add(paths.table)
                table_state = "updated"
    # root attributes: the largest id, the review state
    root_meta = ngff.attributes_file(paths.labels)
    attrs = ngff.read_attributes(root_meta)
    unet = dict(attrs.get("unetpipe", {}))
    unet.update({"max_id": max(max_id, int(data.max())), "edited": True,
                 "table_stale": table_state == "stale", "last_version": version})
    attrs["unetpipe"] = unet
    staged = journal.stage_path(root_meta)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(ngff.with_attributes(root_meta, attrs))
    journal.add(root_meta)
    # review.json
    entries = _describe_actions(actions, old, data, ids, renamed)
    for e in entries:
        e.update(time=time, version=version, chunks=written, table=table_state)
    review = read_review(paths)
    review["identity"] = _identity(paths)
    review["entries"].extend(entries)
    staged = journal.stage_path(paths.review)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(json.dumps(review, indent=1))
    journal.add(paths.review)
    journal.commit(version, time)
    log.info("%s: saved %d object(s) in %d chunk file(s); previous content in %s",
             paths.labels, ids.size, len(written), paths.versions / version)
    return SaveResult(written, ids.tolist(), version, table_state, renamed)


def _describe_actions(actions, old, new, ids, renamed) -> list[dict]:
    entries, explained = [], set()
    for a in actions:
        action = str(a["action"])
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
        a_ids = [int(i) for i in a.get("ids", [])]
        entries.append({"action": action, "ids": a_ids,
                        **{k: v for k, v in a.items() if k not in ("action", "ids")}})
        explained.update(a_ids)
    painted = [int(i) for i in ids if int(i) not in explained]
    if painted:
        entry = {"action": "paint", "ids": painted}
        if renamed:
            entry["renamed"] = {str(k): v for k, v in renamed.items()}
        entries.append(entry)
    return entries


def read_review(paths: SamplePaths) -> dict:
    """The review record ``{sample}.review.json`` of the current store.

    An empty record when there is none, when the one there cannot be read or
    is not shaped as a review record (with a warning), or when it belongs to
    an earlier segmentation (its ``identity`` differs from the store's).
    Either is moved aside the next time the store is opened or saved.
    """
    try:
        identity = _identity(paths)
    except OSError:
        identity = None
    try:
        review = _load_review(paths)
    except _Untrusted as e:
        log.warning("%s: the review record cannot be used (%s); treated as missing",
                    paths.review, e)
        review = None
    if review is not None:
        recorded = review.get("identity")
        if recorded is None or identity is None or recorded == identity:
            return review
    return {"sample": paths.sample, "labels": _rel(paths, paths.labels),
            "identity": identity, "entries": []}


def record_decisions(paths: SamplePaths, ids: Iterable[int], decision: str) -> dict:
    """Record accept / reject decisions in ``review.json`` (atomically).

    Runs under the store's lock, so a save in progress is waited for and its
    record kept. Returns the new entry.
    """
    if decision not in ("accept", "reject"):
        raise ValueError(f"decision must be 'accept' or 'reject', not {decision!r}")
    with store_lock(paths):
        recover(paths)
        review = read_review(paths)
        review["identity"] = _identity(paths)
        entry = {"action": decision, "ids": [int(i) for i in ids], "time": _now()}
        review["entries"].append(entry)
        _write_json(paths.review, review)
    return entry


def decisions(review: Mapping) -> dict[int, str]:
    """The latest accept / reject decision per object id from a review record."""
    out: dict[int, str] = {}
    for e in review.get("entries", []):
        if e.get("action") in ("accept", "reject"):
            for i in e.get("ids", []):
                out[int(i)] = e["action"]
    return out


def list_versions(paths: SamplePaths) -> list[str]:
    """Saved versions, oldest first (a version whose ``version.json`` cannot be
    trusted is left out, with a warning: it cannot be restored)."""
    return [v for v, _ in _versions(paths)]


def _versions(paths: SamplePaths) -> list[tuple[str, dict]]:
    """(name, checked ``version.json``) of the saved versions, oldest first."""
    if not paths.versions.is_dir():
        return []
    out = []
    for p in sorted(paths.versions.iterdir()):
        if not os.path.lexists(p / "version.json"):
            continue
        try:
            out.append((p.name, _load_version(paths, p.name)))
        except _Untrusted as e:
            log.warning("%s: not a valid version (%s); it cannot be restored", p, e)
    return out


def restorable_versions(paths: SamplePaths) -> list[str]:
    """The versions that :func:`restore_version` accepts now, oldest first.

    Undo goes in order: the latest save not undone yet (each restore undoes
    one, and the one before it becomes restorable), and the latest version
    of all (restoring a restore's version redoes what it undid).
    """
    versions, stack = _undo_stack(paths)
    out = {stack[-1]} if stack else set()
    if versions:
        out.add(versions[-1])
    return sorted(out)


def _undo_stack(paths: SamplePaths) -> tuple[list[str], list[str]]:
    found = _versions(paths)
    versions = [v for v, _ in found]
    stack: list[str] = []
    for v, info in found:
        restored = info.get("restored")
        if restored is not None and stack and stack[-1] == restored:
            stack.pop()
        else:
            stack.append(v)
    return versions, stack


def restore_version(store: LabelStore, version: str) -> SaveResult:
    """Undo the save ``version``: put back the files it replaced, through the journal.

    Chunks and table return to their state before that save; the store's
    largest id never goes down (ids stay unique); ``review.json`` keeps its
    history and gains a ``restore`` entry. The content replaced now is kept
    as a new version in turn (restoring it redoes the save).

    Only the latest save can be undone, then the one before it, and so on
    (:func:`restorable_versions`): restoring an older one would put back
    chunks that later saves changed, undoing parts of them.

    Raises
    ------
    InputError
        ``version`` is no saved version, belongs to an earlier segmentation,
        or is not restorable now (the message names what to restore first).
    """
    paths = store.paths
    with store_lock(paths):
        _recover_journal(paths)
        _set_aside_stale(paths)
        _check_identity(store)
        return _restore_version(store, version)


def _restore_version(store: LabelStore, version: str) -> SaveResult:
    paths = store.paths
    try:
        folder = _version_folder(paths, version)
    except _Untrusted as e:
        raise InputError(os.fspath(paths.versions), f"cannot restore: {e}") from None
    if not os.path.lexists(folder / "version.json"):
        aside = sorted(paths.versions.parent.glob(f"{paths.sample}.versions.*.stale/{version}"))
        if aside:
            raise InputError(os.fspath(folder), "is a version of an earlier segmentation of "
                             f"this sample (moved aside to {aside[-1].parent.name}); it cannot "
                             "be restored into this one")
        raise InputError(os.fspath(folder), "is not a saved version")
    try:  # input: its paths lead into the store, its copies lie in the version
        info = _load_version(paths, version)
    except _Untrusted as e:
        raise InputError(os.fspath(folder / "version.json"), f"cannot be trusted ({e}); this "
                         "version cannot be restored") from None
    if info.get("identity") is not None and info["identity"] != _identity(paths):
        raise InputError(os.fspath(folder), "is a version of an earlier segmentation of this "
                                            "sample; it cannot be restored into this one")
    _, stack = _undo_stack(paths)
    if version not in restorable_versions(paths):
        if version in stack:
            later = stack[stack.index(version) + 1:][::-1]
            raise InputError(os.fspath(folder), "is not the latest save; restore the later "
                             f"versions first: {', '.join(later)}")
        raise InputError(os.fspath(folder), "was undone or redone already, and later saves "
                         "changed the store since; restorable now: "
                         f"{', '.join(restorable_versions(paths)) or 'none'}")
    time, new_version = _new_version(paths)
    review_rel = _rel(paths, paths.review)
    root_rel = _rel(paths, ngff.attributes_file(paths.labels))
    prefix = _rel(paths, paths.labels) + "/"
    max_id = store.max_id()
    journal = _Journal(paths)
    written = []
    for f in info["files"]:
        if f["path"] == review_rel:
            continue
        target = paths.results / f["path"]
        if f["existed"]:
            staged = journal.stage_path(target)
            staged.parent.mkdir(parents=True, exist_ok=True)
            if f["path"] == root_rel:
                # the attributes as they were, but the largest id never goes down
                attrs = ngff.read_attributes(folder / f["path"])
                unet = dict(attrs.get("unetpipe") or {})
                unet.update({"max_id": max(max_id, int(unet.get("max_id", 0))),
                             "edited": True, "last_version": new_version})
                attrs["unetpipe"] = unet
                staged.write_text(ngff.with_attributes(folder / f["path"], attrs))
            else:
                shutil.copy2(folder / f["path"], staged)
        journal.add(target)
        if f["path"].startswith(prefix) and Path(f["path"]).name not in ngff.METADATA_FILES:
            written.append(f["path"][len(prefix):])
    review = read_review(paths)
    review["identity"] = _identity(paths)
    review["entries"].append({"action": "restore", "ids": [], "time": time,
                              "version": new_version, "restored": version, "chunks": written})
    staged = journal.stage_path(paths.review)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(json.dumps(review, indent=1))
    journal.add(paths.review)
    journal.commit(new_version, time, restored=version)
    return SaveResult(written, [], new_version, "restored", {})


# --- the table ------------------------------------------------------------------


def _read_table(paths: SamplePaths):
    import pandas as pd

    if not paths.table.exists():
        return None
    return pd.read_csv(paths.table)


def read_table(paths: SamplePaths):
    """The measurement table of a sample, or None when there is none."""
    return _read_table(paths)


def _remeasure(store: LabelStore, table, ids: np.ndarray, box, data, level0_changes):
    """The table with the rows of ``ids`` measured again on the edited labels."""
    import pandas as pd

    from ..io.images import read_image
    from ..stages.measure import block_measurements, combine_measurements

    rows = table[table["label"].isin(ids)]
    boxes = [box] + [object_box(r, spacing=store.spacing) for _, r in rows.iterrows()]
    blocks: set[tuple[int, ...]] = set()
    for b in boxes:
        blocks.update(chunk_indices(b, store.chunks))
    channels = sum(1 for c in table.columns if str(c).startswith("mean_intensity"))
    intensity = probability = None
    if channels:
        image = read_image(store.paths.image)
        intensity = image.data if "c" in image.axes else image.data[None]
    if "mean_probability" in table.columns:
        probability = read_image(store.paths.probabilities).data[0]
    array = store.array()
    partials = []
    for idx in sorted(blocks):
        cbox = tuple(slice(i * c, min(n, (i + 1) * c))
                     for i, c, n in zip(idx, store.chunks, store.shape, strict=True))
        labels = np.asarray(array[cbox])
        inner = intersect(cbox, box)
        if inner is not None:
            labels[shift(inner, cbox)] = \
                data[shift(inner, box)]
        part = block_measurements(
            labels, origin=[s.start for s in cbox], image_shape=store.shape,
            spacing=store.spacing,
            intensity=None if intensity is None else np.asarray(
                intensity[(slice(None), *cbox)].compute(scheduler="synchronous")),
            probability=None if probability is None else 1.0 - np.asarray(
                probability[cbox].compute(scheduler="synchronous"), dtype=np.float64))
        partials.append(part[part["label"].isin(ids)])
    new_rows = combine_measurements(partials, spacing=store.spacing, unit=store.unit,
                                    channels=channels)
    if list(new_rows.columns) != list(table.columns):
        raise ValueError(f"columns differ from the table's: {list(new_rows.columns)}")
    kept = table[~table["label"].isin(ids)]
    out = pd.concat([kept, new_rows.astype(kept.dtypes.to_dict(), errors="ignore")],
                    ignore_index=True)
    return out.sort_values("label", kind="stable").reset_index(drop=True)


# --- export as training data ---------------------------------------------------------


