"""What a command may write where.

Three rules, checked before any work starts (:func:`claim_output`):

1. **An output never lands on or in an input.** ``unetpipe predict CK x x``
   would replace the image with its own probabilities; such a run is refused,
   whatever ``overwrite`` says.
2. **An output never destroys what unetpipe did not make.** An existing output
   is replaced only when it is recognisably the same kind of unetpipe output
   (a store with unetpipe's attributes of the same stage, a metrics JSON, a
   table we wrote, ...; :data:`KINDS`), or an empty folder. Anything else is
   refused in one line naming the path, unless ``overwrite`` is given.
3. **One writer per output.** A lock file beside the output
   (``.{name}.lock``, held with ``flock``) keeps a second run from writing the
   same output; it is refused in one line naming who holds the lock. The
   kernel releases the lock of a killed process, so a stale lock file is simply
   taken over.

While the lock is held, a full disk is reported in one line naming the output,
and the run's partial output is removed (it could not be finished).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import socket
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..core.errors import InputError
from .images import store_kind

log = logging.getLogger("unetpipe")


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        return f.readline(4096).decode("utf-8", "replace").strip()


def _is_table(path: Path) -> bool:
    return path.is_file() and _first_line(path).split(",")[0] == "label"


def _is_summary(path: Path) -> bool:
    return path.is_file() and _first_line(path).split(",")[0] == "sample"


def _is_metrics(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size > 64 * 2**20:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"sample", "scores"} <= set(data)


def _has_marker(path: Path) -> bool:
    """A PNG or HTML file of unetpipe's report: it names unetpipe as its maker."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(8192)
    return b"unetpipe" in head


def _is_package(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    import yaml

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n in ("rdf.yaml", "bioimageio.yaml")]
            rdf = yaml.safe_load(z.read(names[0])) if names else None
    except (OSError, zipfile.BadZipFile, yaml.YAMLError, KeyError):
        return False
    return isinstance(rdf, dict) and isinstance(rdf.get("config"), dict) \
        and "unetpipe" in rdf["config"]


def _is_model_folder(path: Path) -> bool:
    """A folder training writes into: it replaces only its own files there, so
    those that exist must be unetpipe's (a checkpoint, the history, the curves)."""
    if not path.is_dir():
        return False
    ours = {"checkpoint_best.pt": zipfile.is_zipfile, "checkpoint_last.pt": zipfile.is_zipfile,
            "checkpoint_tuned.pt": zipfile.is_zipfile, "segment_params.yaml": _is_segment_params,
            "history.csv": lambda f: _first_line(f).split(",")[0] == "iteration",
            "training_curves.png": _has_marker}
    return all(check(path / name) for name, check in ours.items() if (path / name).is_file()) \
        and not any((path / name).is_dir() for name in ours)


def _is_segment_params(path: Path) -> bool:
    """The settings file the tune stage writes (it starts with a comment naming unetpipe)."""
    return path.is_file() and _first_line(path).startswith("# unetpipe")


def _is_checkpoint(path: Path) -> bool:
    """A PyTorch checkpoint file (a zip archive)."""
    return path.is_file() and zipfile.is_zipfile(path)


def _is_demo_folder(path: Path) -> bool:
    """A folder the demo writes into: it replaces only its own TIFFs there."""
    def tiff(f: Path) -> bool:
        with open(f, "rb") as fh:
            return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    return path.is_dir() and all(tiff(f) for f in path.glob("*/*/*.tif") if f.is_file())


def _store(stage: str) -> Callable[[Path], bool]:
    return lambda path: path.is_dir() and store_kind(path) == stage


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "preprocessed": ("preprocessed store", _store("preprocessed")),
    "targets": ("targets store", _store("targets")),
    "probabilities": ("probability store", _store("probabilities")),
    "labels": ("labels store", _store("labels")),
    "table": ("object table", _is_table),
    "metrics": ("metrics JSON", _is_metrics),
    "summary": ("metrics summary", _is_summary),
    "model": ("model folder", _is_model_folder),
    "checkpoint": ("checkpoint", _is_checkpoint),
    "segment_params": ("tuned segmentation settings", _is_segment_params),
    "package": ("bioimage.io package", _is_package),
    "figure": ("report figure or page", _has_marker),
    "demo": ("demo data folder", _is_demo_folder),
}
"""Output kind -> (what it is called, how an existing one is recognised)."""


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_inputs(out: str | os.PathLike,
                 inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Raise InputError when ``out`` cannot be an output at all: it has no name
    (``/``), it is, is inside or holds one of ``inputs``, or it holds the working
    directory. Changes nothing on disk.

    Returns
    -------
    pathlib.Path
        ``out``, resolved.
    """
    target = Path(os.path.realpath(os.fspath(out) or "."))
    if not target.name:
        raise InputError(out, "is not a file or folder that can be written")
    for given in inputs:
        if given is None:
            continue
        source = Path(os.path.realpath(os.fspath(given)))
        if _inside(target, source) or _inside(source, target):
            where = "is" if target == source else ("is inside" if _inside(target, source)
                                                   else "holds")
            raise InputError(out, f"{where} the input {os.fspath(given)}: an output may not "
                                  "replace what the command reads; choose another output")
    if _inside(Path(os.path.realpath(os.getcwd())), target):
        raise InputError(out, "holds the working directory: an output may not replace the "
                              "folder you are in; choose another output")
    return target


def check_output(out: str | os.PathLike, *, kind: str,
                 inputs: Sequence[str | os.PathLike | None] = (),
                 overwrite: bool = False) -> Path:
    """Raise InputError unless ``out`` may be written (rules 1 and 2 of the module).

    Parameters
    ----------
    out : path
        The output file or store.
    kind : str
        A key of :data:`KINDS`.
    inputs : sequence of paths
        What the command reads (None entries are skipped); see
        :func:`check_inputs`.
    overwrite : bool
        Replace an existing output that is not recognisably ``kind``.

    Returns
    -------
    pathlib.Path
        ``out``, resolved.
    """
    name, recognise = KINDS[kind]
    target = check_inputs(out, inputs)
    if not os.path.lexists(target):
        return target
    if target.is_dir() and not any(target.iterdir()):
        return target
    try:
        ours = recognise(target)
    except OSError:
        ours = False
    if ours:
        return target
    if overwrite:
        log.warning("%s: replacing it (--overwrite), although it is not a %s written by "
                    "unetpipe", out, name)
        return target
    what = "a folder" if target.is_dir() else "a file"
    article = "an" if name[0] in "aeiou" else "a"
    raise InputError(out, f"exists and is {what} that is not {article} {name} written by "
                          "unetpipe; refusing to replace it: choose another output, remove it, "
                          "or give --overwrite")


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: ``.{name}.lock`` beside it."""
    out = Path(os.fspath(out) or ".")
    if not out.name:  # ".", "..": name the folder itself
        out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"process {int(info['pid'])} on {info['host']}, since {info['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold the one-writer lock of ``out`` while the block runs; refuse at once
    (InputError naming the holder) when another process holds it."""
    import fcntl

    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(out, f"is being written by {_holder(path)} (lock {path}); "
                                  "wait for that run to finish, or stop it") from None
        # the file may have been removed by its last holder between open and flock
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        since = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": since}).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def claim_output(out: str | os.PathLike, *, kind: str,
                 inputs: Sequence[str | os.PathLike | None] = (), overwrite: bool = False,
                 partial: str | os.PathLike | None = None) -> Iterator[Path]:
    """Check that ``out`` may be written, and hold its one-writer lock meanwhile.

    Parameters
    ----------
    out, kind, inputs, overwrite
        As for :func:`check_output`, which runs once the lock is held.
    partial : path, optional
        Where the run builds ``out``: removed when the disk fills up, and when
        the run stops on bad input and began it itself.

    Raises
    ------
    InputError
        The output may not be written, another process is writing it, or the
        disk filled up (named with the output and the free space left).
    """
    check_inputs(out, inputs)  # before the lock makes any folder
    with output_lock(out):
        target = check_output(out, kind=kind, inputs=inputs, overwrite=overwrite)
        fresh = partial is not None and not os.path.lexists(partial)
        try:
            yield target
        except InputError:
            # bad input found on the way: a partial this run began cannot be finished
            # (one an earlier run left is kept, for a run with the right input)
            if fresh:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            free = shutil.disk_usage(_existing_parent(Path(os.fspath(out)))).free
            raise InputError(out, f"the disk is full (no space left on device) while "
                                  f"writing it ({_size(free)} free now); the partial output "
                                  "was removed: free some space and run again") from None


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


def check_free_space(out: str | os.PathLike, raw_bytes: float, *, what: str,
                     compression: float = 10.0) -> None:
    """Refuse in one line when an output cannot fit on the disk of ``out``.

    Parameters
    ----------
    out : path
        The output.
    raw_bytes : float
        Its declared size, uncompressed.
    what : str
        What it is, for the message.
    compression : float
        The best compression ratio it can get: it needs at least
        ``raw_bytes / compression`` (label images compress far better than
        intensities), so a refusal means it cannot fit.
    """
    free = shutil.disk_usage(_existing_parent(Path(os.path.abspath(os.fspath(out))))).free
    need = raw_bytes / compression
    if need > free:
        raise InputError(out, f"writing {what} needs at least {_size(need)} on disk "
                              f"({_size(raw_bytes)} uncompressed, compressed at best "
                              f"{compression:g}:1), but only {_size(free)} is free there")
