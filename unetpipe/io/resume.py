"""Resumable chunked outputs, shared by the predict and segment stages.

A stage builds its output store as the hidden ``.NAME.partial`` beside the
declared output. Its attributes hold a fingerprint of everything the stored
values depend on, and every finished block leaves an empty marker file in
:data:`DONE_DIR` (created after the block's data are written). A run started
again with the same fingerprint does only the blocks without a marker; when
all are done the store is marked complete, the markers are removed and the
store is renamed into place. Snakemake removes only declared outputs when a
job fails, so the partial store survives a killed job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("unetpipe")

DONE_DIR = "_unetpipe_done"


def partial_path(out: str | os.PathLike) -> Path:
    """Where a stage builds ``out`` until every block is done."""
    out = Path(os.fspath(out))
    return out.with_name(f".{out.name}.partial")


def input_signature(path: str) -> dict:
    """What identifies an input's content: the stat of its metadata files (a
    rewritten store or file is new), or of the file itself."""
    if os.path.isfile(path):
        st = os.stat(path)
        return {"mtime_ns": st.st_mtime_ns, "size": st.st_size}
    found = {}
    for folder in (path, os.path.join(path, "0")):
        for name in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            meta = os.path.join(folder, name)
            if os.path.exists(meta):
                st = os.stat(meta)
                found[os.path.relpath(meta, path)] = [st.st_mtime_ns, st.st_size]
    return found


def mark_done(folder: str | os.PathLike, index) -> None:
    """Record block ``index`` (a tuple of ints) as done in a marker folder."""
    name = ".".join(map(str, index))
    os.close(os.open(os.path.join(os.fspath(folder), name), os.O_CREAT | os.O_WRONLY, 0o644))


def markers(folder: str | os.PathLike) -> list[tuple[int, ...]]:
    """The blocks recorded in a marker folder."""
    folder = Path(os.fspath(folder))
    if not folder.is_dir():
        return []
    out = []
    for name in os.listdir(folder):
        try:
            out.append(tuple(int(v) for v in name.split(".")))
        except ValueError:
            continue
    return out


def resume_state(partial: Path, fingerprint: dict, *, resume: bool,
                 stage: str) -> set | str | None:
    """Blocks already done in a partial output made the same way ("complete" when
    all were, and the run was killed while finishing), or None to start afresh
    (the partial output is then removed)."""
    import zarr

    if not partial.exists():
        return None
    reason = "resume is off"
    if resume:
        try:
            attrs = dict(zarr.open_group(str(partial), mode="r").attrs.get("unetpipe", {}))
        except Exception:
            attrs = {}
        stored = attrs.get("fingerprint")
        if stored == json.loads(json.dumps(fingerprint)):
            if attrs.get("complete"):
                log.info("%s: %s is complete; finishing it", stage, partial)
                return "complete"
            (partial / DONE_DIR).mkdir(exist_ok=True)
            done = set(markers(partial / DONE_DIR))
            log.info("%s: resuming %s: %d block(s) already done", stage, partial, len(done))
            return done
        changed = sorted(k for k in fingerprint if (stored or {}).get(k) != fingerprint[k])
        reason = f"it was made with other {', '.join(changed) or 'settings'}"
    log.info("%s: starting afresh: the partial output %s is not used (%s)", stage, partial,
             reason)
    shutil.rmtree(partial)
    return None


def finish(partial: Path, *, remove: tuple[str, ...] = ()) -> None:
    """Mark a partial output complete, then drop its block records (and the
    named scratch folders inside it)."""
    import zarr

    root = zarr.open_group(str(partial), mode="r+")
    attrs = dict(root.attrs["unetpipe"])
    attrs["complete"] = True
    root.attrs["unetpipe"] = attrs
    for name in (DONE_DIR, *remove):
        shutil.rmtree(partial / name, ignore_errors=True)
