"""Small real inputs and bad inputs for tests/test_bad_input_matrix.py, and the
helpers that run a command in a folder and tell what it changed there."""

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import tifffile
import zarr

from unetpipe.io.images import write_ome_zarr, write_tiff

SPACING = (0.5, 0.5)
USER_FILE = "notes.txt"  # what the user keeps in keep/


def run(args, cwd, *, quiet=True, timeout=180):
    """``unetpipe [-q] ARGS`` (or ``python ARGS`` when args[0] is "python") in ``cwd``,
    as a separate process."""
    args = [str(a) for a in args]
    if args[0] == "python":
        cmd = [sys.executable, *args[1:]]
    else:
        cmd = [sys.executable, "-m", "unetpipe", *(["-q"] if quiet else []), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _check(proc, what):
    if proc.returncode != 0:
        raise RuntimeError(f"making the test inputs: {what} failed:\n{proc.stderr}")


# --- the folder listing ------------------------------------------------------------


def listing(root) -> dict:
    """Everything below ``root``: relative path -> ("dir",), ("link", target) or
    ("file", size, mtime_ns, sha256). Links are not followed."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def changes(before: dict, after: dict) -> list[str]:
    """Paths added, removed or changed between two listings."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def outside(changed, allowed) -> list[str]:
    """The changed paths that match none of the ``allowed`` patterns (fnmatch; a
    pattern also allows everything below it)."""
    return [p for p in changed
            if not any(fnmatch(p, pat) or fnmatch(p, pat + "/*") for pat in allowed)]


def leftovers(root, out) -> list[str]:
    """What a run leaves beside an output while it works: ``.NAME.partial``,
    ``.NAME.tmp-*``, the lock ``.NAME.lock``."""
    out = Path(root, out)
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name in (f".{out.name}.partial", f".{out.name}.lock")
                  or p.name.startswith(f".{out.name}.tmp"))


# --- the inputs ------------------------------------------------------------------------


def _labels():
    """A 64 x 64 image of 16 separate squares."""
    lab = np.zeros((64, 64), np.uint16)
    k = 1
    for y in range(4, 60, 16):
        for x in range(4, 60, 16):
            lab[y:y + 10, x:x + 10] = k
            k += 1
    return lab


def save_tiny_checkpoint(path):
    """A checkpoint as training writes it, of a tiny untrained three-class U-Net."""
    import torch

    from unetpipe.nn.checkpoint import FORMAT, VERSION, save_checkpoint
    from unetpipe.nn.model import UNet

    torch.manual_seed(0)
    model = UNet(ndim=2, in_channels=1, out_channels=3, depth=1, features=2).eval()
    cfg = model.config
    save_checkpoint({
        "format": FORMAT, "version": VERSION, "iteration": 1,
        "model": {"class": "UNet", "config": cfg, "state_dict": model.state_dict()},
        "targets": {"mode": "three_class"},
        "data": {"ndim": 2, "channels": 1, "spacing": list(SPACING), "unit": None},
        "normalization": {"percentiles": [1.0, 99.8], "clip": False},
    }, path)
    return path


def _probabilities_like(folder: Path, name: str, data):
    """A probability store with the attributes of unetpipe predict's ``p.ome.zarr``."""
    attrs = dict(zarr.open_group(str(folder / "p.ome.zarr"), mode="r").attrs["unetpipe"])
    write_ome_zarr(folder / name, data, axes="cyx", spacing=SPACING, chunks=(32, 32),
                   attrs=attrs)


def make_inputs(folder) -> Path:
    """Every input of the matrix, in ``folder``:

    good: img.tif (uint16) with truth.tif (its labels) and pred.tif (a copy), the
    store x.ome.zarr (unetpipe preprocess, with labels/gt), t.zarr (targets),
    ck.pt (a tiny checkpoint), p.ome.zarr (predict), l.ome.zarr and l.csv
    (segment --table), m.json (evaluate), summary.csv (summarize);
    the user's: keep/notes.txt and mine.txt;
    bad: neg.tif, nan.tif, half.tif, complex.tif (labels or images), shape.tif
    (48 x 64), rnd.pt and txt.pt (not checkpoints), huge.zarr (1e6 x 1e6,
    no data written), pnan/pneg/pbig/pu8.ome.zarr (probabilities with NaN, -0.5,
    1.5 in the last block of 128 x 128, and uint8).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lab = _labels()
    rng = np.random.default_rng(0)
    img = (rng.integers(100, 300, lab.shape) + 1000 * (lab > 0)).astype(np.uint16)
    write_tiff(folder / "img.tif", img, axes="yx", spacing=SPACING)
    write_tiff(folder / "truth.tif", lab, axes="yx", spacing=SPACING)
    write_tiff(folder / "pred.tif", lab, axes="yx", spacing=SPACING)
    save_tiny_checkpoint(folder / "ck.pt")

    for what, args in [
        ("preprocess", ["preprocess", "img.tif", "x.ome.zarr", "--labels", "truth.tif"]),
        ("targets", ["targets", "x.ome.zarr", "t.zarr"]),
        ("predict", ["predict", "ck.pt", "x.ome.zarr", "p.ome.zarr"]),
        ("segment", ["segment", "p.ome.zarr", "l.ome.zarr", "--table", "l.csv", "--image",
                     "x.ome.zarr"]),
        ("evaluate", ["evaluate", "l.ome.zarr", "x.ome.zarr", "m.json"]),
        ("summarize", ["summarize", "summary.csv", "m.json"]),
    ]:
        _check(run(args, folder), what)

    (folder / "keep").mkdir()
    (folder / "keep" / USER_FILE).write_text("my notes, not unetpipe's\n")
    (folder / "mine.txt").write_text("a file of mine\n")

    values = lab.astype(np.float32)
    bad = values.copy()
    bad[0, 0] = -1
    write_tiff(folder / "neg.tif", bad.astype(np.int16), axes="yx")
    bad = values.copy()
    bad[0, 0] = np.nan
    write_tiff(folder / "nan.tif", bad, axes="yx")
    bad = values.copy()
    bad[0, 0] = 0.5
    write_tiff(folder / "half.tif", bad, axes="yx")
    tifffile.imwrite(folder / "complex.tif", values.astype(np.complex64))
    write_tiff(folder / "shape.tif", lab[:48], axes="yx", spacing=SPACING)
    (folder / "rnd.pt").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "txt.pt").write_text("these are my weights, honestly\n")
    zarr.create_array(str(folder / "huge.zarr"), shape=(10**6, 10**6), chunks=(4096, 4096),
                      dtype="u2")

    probs = np.asarray(zarr.open_array(str(folder / "p.ome.zarr" / "0"), mode="r")[...])
    big = np.tile(probs, (1, 2, 2))  # 128 x 128: the bad value far from block (0, 0)
    for name, value in (("pnan", np.nan), ("pneg", -0.5), ("pbig", 1.5)):
        data = big.copy()
        data[:, 120, 120] = value
        _probabilities_like(folder, f"{name}.ome.zarr", data)
    _probabilities_like(folder, "pu8.ome.zarr", (probs * 255).astype(np.uint8))
    return folder


# --- faults ---------------------------------------------------------------------------


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_stale_lock(folder, out):
    """The lock file a killed run leaves: its record, no flock held."""
    from unetpipe.io.outputs import lock_path

    path = Path(folder) / lock_path(out)
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                "since": "2020-01-01T00:00:00+00:00"}))


@contextlib.contextmanager
def tmpfs(folder, size="300k"):
    """A tiny tmpfs mounted at ``folder`` (root only); yields an error text instead
    of mounting where that is not possible."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        yield "no mount command"
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        yield f"cannot mount a tmpfs here: {(proc.stderr or proc.stdout).strip()}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def results_folder(folder, sample="s") -> Path:
    """A results folder for ``sample`` from the inputs' stores (as the workflow lays
    it out): labels, table, preprocessed image."""
    folder = Path(folder)
    results = folder / "results"
    for src, dest in (("l.ome.zarr", f"labels/{sample}.ome.zarr"),
                      ("x.ome.zarr", f"preprocessed/{sample}.ome.zarr")):
        (results / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder / src, results / dest)
    (results / "tables").mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "l.csv", results / "tables" / f"{sample}.csv")
    return results


def _identity(results, sample):
    """The store identity a save records, so that recovery would apply the journal."""
    from unetpipe.core.layout import sample_paths

    try:
        from unetpipe.review.store import _identity
    except ImportError:
        return None
    return _identity(sample_paths(results, sample))


def crafted_journal(folder, entries, staged, *, sample="s"):
    """A journal of an "interrupted save" of ``results/labels/{sample}.ome.zarr``
    (the format of ``unetpipe.review.store._Journal.commit``) with the given entries;
    ``staged`` maps a path below the journal folder to the content to put there."""
    results = Path(folder) / "results"
    journal = results / "labels" / f".{sample}.ome.zarr.journal"
    (journal / "new").mkdir(parents=True)
    (journal / "old").mkdir()
    for rel, content in staged.items():
        path = journal / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    manifest = {"version": "20200101T000000000000Z", "time": "2020-01-01T00:00:00.000000Z",
                "identity": _identity(results, sample), "entries": entries}
    (journal / "journal.json").write_text(json.dumps(manifest))
    return journal
