"""Review and correction of labels without Qt: edits, the queue, journaled saves, export."""

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from numpy.testing import assert_array_equal
from review_data import chunk_files, labels_2d, labels_3d, make_results, tree
from tiny_workflow import TINY, job_table, snakemake

from unetpipe.core import boxes, layout
from unetpipe.core.errors import InputError
from unetpipe.inputs.samples import curated_samples
from unetpipe.io import ngff
from unetpipe.io.images import ngff_metadata, read_image, read_labels, write_ome_zarr
from unetpipe.review import curate, edits
from unetpipe.review import queue as rq
from unetpipe.review import store as rv
from unetpipe.stages.measure import measure_store, write_table

ROOT = Path(__file__).resolve().parents[1]


# --- pure edit functions ----------------------------------------------------------------


def test_delete_and_merge_change_exactly_the_objects_pixels():
    lab = labels_2d()
    out = edits.delete_objects(lab, [2, 4])
    expected = lab.copy()
    expected[(lab == 2) | (lab == 4)] = 0
    assert_array_equal(out, expected)
    assert out.dtype == lab.dtype and lab[10, 4] == 2  # input untouched

    merged = edits.merge_objects(lab, [3, 2])
    expected = lab.copy()
    expected[lab == 3] = 2
    assert_array_equal(merged, expected)
    assert_array_equal(edits.merge_objects(lab, [2, 3], into=9) == 9, (lab == 2) | (lab == 3))
    with pytest.raises(ValueError, match="at least two"):
        edits.merge_objects(lab, [2])

    lab3 = labels_3d()
    out3 = edits.delete_objects(lab3, 1)
    assert_array_equal(out3 == 0, (lab3 == 0) | (lab3 == 1))
    assert_array_equal(out3[lab3 != 1], lab3[lab3 != 1])
    merged3 = edits.merge_objects(lab3, [2, 3])
    assert_array_equal(merged3 == 2, (lab3 == 2) | (lab3 == 3))
    assert_array_equal(merged3[(lab3 != 2) & (lab3 != 3)], lab3[(lab3 != 2) & (lab3 != 3)])


def test_split_a_dumbbell_by_two_seeds_2d():
    lab = labels_2d()
    out = edits.split_object(lab, [[19, 19], [19, 26]], new_ids=[7, 8])
    obj = lab == 4
    assert_array_equal(out[~obj], lab[~obj])  # nothing else changes
    assert set(np.unique(out[obj])) == {7, 8}  # the union is the object
    # each bell is whole in its piece; the neck is cut between its two pixels
    assert (out[17:22, 17:22] == 7).all() and (out[17:22, 24:29] == 8).all()
    assert out[19, 22] == 7 and out[19, 23] == 8
    with pytest.raises(ValueError, match="outside object 4"):
        edits.split_object(lab, [[19, 19], [3, 3]], new_ids=[7, 8])
    with pytest.raises(ValueError, match="at least two seeds"):
        edits.split_object(lab, [[19, 19]], new_ids=[7])


def test_split_in_3d_and_with_an_unreached_part():
    lab = labels_3d()
    out = edits.split_object(lab, [[4, 43, 33], [4, 43, 42]], new_ids=[10, 11],
                          spacing=(2.0, 1.0, 1.0))
    obj = lab == 4
    assert_array_equal(out[~obj], lab[~obj])
    assert (out[2:7, 40:47, 30:37] == 10).all() and (out[2:7, 40:47, 39:46] == 11).all()
    assert out[4, 43, 37] == 10 and out[4, 43, 38] == 11
    # an object in two disconnected parts, seeds in one: the other joins the nearest piece
    two = np.zeros((5, 12), np.uint16)
    two[2, 0:6] = 5
    two[1:4, 9:12] = 5
    split = edits.split_object(two, [[2, 0], [2, 5]], new_ids=[1, 2])
    assert_array_equal(split > 0, two > 0)
    assert split[2, :6].tolist() == [1, 1, 1, 2, 2, 2] and (split[1:4, 9:12] == 2).all()


def test_review_queue_flags_and_orders():
    table = pd.DataFrame({
        "label": [1, 2, 3, 4, 5, 6, 7],
        "area": [100.0, 110, 95, 105, 4, 900, 100],
        "mean_probability": [0.9, 0.9, 0.3, 0.9, 0.9, 0.9, 0.9],
        "solidity": [0.95, 0.95, 0.95, 0.6, 0.95, 0.95, 0.95],
        "touches_border": [False, False, False, False, False, True, False],
        "n_chunks": [1, 1, 1, 2, 1, 1, 1],
    })
    queue = rq.review_queue(table)
    assert queue["label"].tolist() == [4, 6, 3, 5]
    assert dict(zip(queue["label"], queue["reasons"], strict=True)) == {
        4: "low solidity, seam", 6: "large, border", 3: "low probability", 5: "small"}
    quiet = rq.review_queue(table, size_mad=0, min_probability=0, min_solidity=0, seams=False,
                            border=False)
    assert quiet.empty


def test_region_helpers():
    assert rq.snap_box((slice(5, 9), slice(0, 3)), shape=(20, 10), chunks=(4, 4), margin=1) == \
        (slice(4, 12), slice(0, 4))
    assert rq.snap_box((slice(17, 20),), shape=(19,), chunks=(8,)) == (slice(16, 19),)
    assert boxes.chunk_indices((slice(3, 9), slice(0, 2)), (4, 4)) == [(0, 0), (1, 0), (2, 0)]
    row = {"bbox_min_y": 2.0, "bbox_max_y": 6.0, "bbox_min_x": 1.0, "bbox_max_x": 3.0}
    assert rq.object_box(row, spacing=(0.5, 0.5)) == (slice(4, 12), slice(2, 6))


# --- saving ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_save_rewrites_only_changed_chunks_keeps_a_version_and_records(tmp_path, version):
    lab = labels_2d()
    paths = make_results(tmp_path, lab, version=version)
    # chunk (1, 1) of level 0: its file in Zarr format 3, and in format 2 (NGFF 0.4)
    key = "0/c/1/1" if version == "0.5" else "0/1/1"
    before = chunk_files(paths.labels)
    table_before = pd.read_csv(paths.table)
    store = rv.LabelStore.open(paths.results, "cells")
    assert store.shape == (24, 32) and store.storage_chunks == (8, 8)
    assert store.fits_whole() and not store.fits_whole(100)

    edited = edits.merge_objects(store.read(), [2, 3])
    result = rv.save_region(store, edited, actions=[{"action": "merge", "ids": [2, 3]}])
    # object 3 lies in chunk (1, 1) only: one chunk file rewritten, no other touched
    assert result.chunks == [key] and result.ids == [2, 3]
    after = chunk_files(paths.labels)
    assert set(after) == set(before)
    for key in before:
        if key != key:
            assert after[key] == before[key], key  # same bytes, same inode and mtime
    assert after[key][0] != before[key][0]
    assert_array_equal(read_labels(paths.labels).data.compute(), edited)
    # the previous chunk is kept, byte for byte, and restores the old labels
    version = paths.versions / result.version
    assert (version / f"labels/cells.ome.zarr/{key}").read_bytes() == before[key][0]
    assert rv.list_versions(paths) == [result.version]
    # the record
    review = json.loads(paths.review.read_text())
    (entry,) = review["entries"]
    assert entry["action"] == "merge" and entry["ids"] == [2, 3]
    assert entry["chunks"] == [key] and entry["version"] == result.version
    assert entry["time"].endswith("Z") and entry["table"] == "updated"
    # the table: rows of 2 and 3 recomputed (3 gone), equal to measuring anew
    table = pd.read_csv(paths.table)
    fresh = measure_store(paths.labels, image_path=paths.image,
                          probabilities_path=paths.probabilities)
    assert table["label"].tolist() == [1, 2, 4]
    pd.testing.assert_frame_equal(table, fresh, check_dtype=False, rtol=1e-9)
    pd.testing.assert_frame_equal(table[table.label != 2].reset_index(drop=True),
                                  table_before[table_before.label.isin([1, 4])]
                                  .reset_index(drop=True))
    attrs = zarr.open_group(str(paths.labels), mode="r").attrs
    assert attrs["unetpipe"]["max_id"] == 4 and attrs["unetpipe"]["table_stale"] is False
    assert ngff_metadata(attrs)["multiscales"][0]["datasets"][0]["path"] == "0"  # NGFF intact
    ngff.validate(paths.labels)
    assert not paths.journal.exists()

    # restoring the version brings back the old labels and table
    rv.restore_version(rv.LabelStore.open(paths.results, "cells"), result.version)
    assert_array_equal(read_labels(paths.labels).data.compute(), lab)
    pd.testing.assert_frame_equal(pd.read_csv(paths.table), table_before)
    assert [e["action"] for e in rv.read_review(paths)["entries"]] == ["merge", "restore"]
    ngff.validate(paths.labels)


def test_delete_to_background_removes_the_chunk_file(tmp_path):
    paths = make_results(tmp_path, labels_2d())
    store = rv.LabelStore.open(paths.results, "cells")
    result = rv.save_region(store, edits.delete_objects(store.read(), [1]),
                            actions=[{"action": "delete", "ids": [1]}])
    assert result.chunks == ["0/c/0/0"]
    assert not (paths.labels / "0/c/0/0").exists()  # all background: Zarr's fill value
    assert read_labels(paths.labels).data.compute()[2:6, 2:6].max() == 0
    assert (paths.versions / result.version / "labels/cells.ome.zarr/0/c/0/0").exists()
    assert 1 not in pd.read_csv(paths.table)["label"].tolist()


def test_region_save_split_and_painted_ids_stay_unique(tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    table = rv.read_table(paths)
    row = table.set_index("label").loc[4]
    box = store.region_for([rq.object_box({"label": 4, **row}, spacing=store.spacing)],
                           margin=1)
    assert box == (slice(16, 24), slice(16, 32))
    region = store.read(box)
    seeds = np.array([[19, 19], [19, 26]]) - [16, 16]
    new_id = store.max_id() + 1
    region = edits.split_object(region, seeds, new_ids=[new_id, new_id + 1])
    # a stroke painted with id 1, which exists outside the region
    region[0, 0:2] = 1
    result = rv.save_region(store, region, box,
                            actions=[{"action": "split", "ids": [4, new_id, new_id + 1]}])
    assert result.renamed == {1: 7}
    assert sorted(result.chunks) == ["0/c/2/2", "0/c/2/3"]
    saved = read_labels(paths.labels).data.compute()
    assert_array_equal(saved[:16], lab[:16])
    assert set(np.unique(saved)) == {0, 1, 2, 3, 5, 6, 7}
    assert (saved[16, 16:18] == 7).all() and (saved == 1).sum() == 16
    assert [e["action"] for e in rv.read_review(paths)["entries"]] == ["split", "paint"]
    assert rv.read_review(paths)["entries"][1]["ids"] == [7]
    assert rv.LabelStore.open(paths.results, "cells").max_id() == 7
    assert pd.read_csv(paths.table)["label"].tolist() == [1, 2, 3, 5, 6, 7]


def test_3d_save_updates_the_pyramid_chunks(tmp_path):
    lab = labels_3d()
    paths = make_results(tmp_path, lab, spacing=[2.0, 0.5, 0.5], levels=1)
    store = rv.LabelStore.open(paths.results, "cells")
    assert [f for _, f in store.levels] == [(1, 1, 1), (1, 2, 2)]
    before = chunk_files(paths.labels)
    box = store.region_for([(slice(1, 4), slice(2, 8), slice(2, 8))], margin=0)
    assert box == (slice(0, 4), slice(0, 32), slice(0, 32))
    result = rv.save_region(store, edits.delete_objects(store.read(box), [1]), box,
                            actions=[{"action": "delete", "ids": [1]}])
    assert sorted(result.chunks) == ["0/c/0/0/0", "1/c/0/0/0"]
    after = chunk_files(paths.labels)
    assert {k for k in before if after.get(k) != before[k]} == {"0/c/0/0/0", "1/c/0/0/0"}
    level0 = np.asarray(zarr.open_array(str(paths.labels / "0"))[:])
    level1 = np.asarray(zarr.open_array(str(paths.labels / "1"))[:])
    assert_array_equal(level0, edits.delete_objects(lab, [1]))
    assert_array_equal(level1, level0[:, ::2, ::2])
    fresh = measure_store(paths.labels, image_path=paths.image,
                          probabilities_path=paths.probabilities)
    pd.testing.assert_frame_equal(pd.read_csv(paths.table), fresh, check_dtype=False, rtol=1e-9)


def _save_killed_after_the_first_file(store, edited, monkeypatch):
    """Save ``edited`` (objects 1 and 3 deleted), killed once one file is in place."""
    real, calls = rv._apply_one, []

    def crash_after_first(src, dest):
        if calls:
            raise KeyboardInterrupt("napari closed")
        calls.append(dest)
        real(src, dest)

    monkeypatch.setattr(rv, "_apply_one", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        rv.save_region(store, edited, actions=[{"action": "delete", "ids": [1, 3]}])
    monkeypatch.setattr(rv, "_apply_one", real)


def test_a_crash_mid_apply_is_rolled_forward_on_open(tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    edited = edits.delete_objects(store.read(), [1, 3])  # chunks (0, 0) and (1, 1)
    _save_killed_after_the_first_file(store, edited, monkeypatch)
    # the store is half old, half new until it is opened again
    half = np.asarray(zarr.open_array(str(paths.labels / "0"))[:])
    assert not np.array_equal(half, lab) and not np.array_equal(half, edited)
    assert (paths.journal / rv.JOURNAL_FILE).exists()
    reopened = rv.LabelStore.open(paths.results, "cells")
    assert reopened.recovered == "rolled forward"
    assert_array_equal(read_labels(paths.labels).data.compute(), edited)
    assert not paths.journal.exists()
    (version,) = rv.list_versions(paths)
    assert rv.read_review(paths)["entries"][0]["ids"] == [1, 3]
    assert pd.read_csv(paths.table)["label"].tolist() == [2, 4]
    rv.restore_version(reopened, version)
    assert_array_equal(read_labels(paths.labels).data.compute(), lab)


def test_a_crash_before_the_journal_is_complete_is_rolled_back(tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    before = chunk_files(paths.labels)
    store = rv.LabelStore.open(paths.results, "cells")
    real = rv._write_json

    def crash_on_manifest(path, data):
        if path.name == rv.JOURNAL_FILE:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(rv, "_write_json", crash_on_manifest)
    with pytest.raises(OSError, match="disk full"):
        rv.save_region(store, edits.delete_objects(store.read(), [2]))
    monkeypatch.setattr(rv, "_write_json", real)
    assert paths.journal.exists()
    assert chunk_files(paths.labels) == before  # nothing in the store was touched
    assert rv.LabelStore.open(paths.results, "cells").recovered == "rolled back"
    assert not paths.journal.exists() and not paths.review.exists()
    assert_array_equal(read_labels(paths.labels).data.compute(), lab)


# --- one save at a time, journal guards ---------------------------------------------------


def _hold_commit(monkeypatch):
    """Make saves in threads named "slow" stop before their journal is committed."""
    staged, go_on = threading.Event(), threading.Event()
    real = rv._Journal.commit

    def commit(self, *args, **kwargs):
        if threading.current_thread().name == "slow":
            staged.set()
            assert go_on.wait(20)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(rv._Journal, "commit", commit)
    return staged, go_on


def test_decisions_and_saves_wait_for_a_save_in_progress(tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    staged, go_on = _hold_commit(monkeypatch)
    errors = []

    def run(func, *args, **kwargs):
        try:
            func(*args, **kwargs)
        except BaseException as e:
            errors.append(e)

    first = edits.delete_objects(lab, [1])
    slow = threading.Thread(target=run, name="slow", args=(rv.save_region, store, first),
                            kwargs={"actions": [{"action": "delete", "ids": [1]}]})
    slow.start()
    assert staged.wait(20)
    # Accept, and a second save on top of the first, while the first is committing
    second = edits.delete_objects(first, [4])
    others = [threading.Thread(target=run, args=(rv.record_decisions, paths, [2], "accept")),
              threading.Thread(target=run, args=(rv.save_region, store, second))]
    for t in others:
        t.start()
    time.sleep(0.5)
    assert all(t.is_alive() for t in others)  # they wait: the journal is left alone
    assert (paths.journal / "new").is_dir() and not paths.review.exists()
    go_on.set()
    for t in [slow, *others]:
        t.join(30)
    assert not errors
    final = read_labels(paths.labels).data.compute()
    assert_array_equal(final, second)
    assert pd.read_csv(paths.table)["label"].tolist() == [2, 3]
    actions = [(e["action"], e["ids"]) for e in rv.read_review(paths)["entries"]]
    assert actions[0] == ("delete", [1]) and ("accept", [2]) in actions
    assert ("paint", [4]) in actions and len(actions) == 3
    assert len(rv.list_versions(paths)) == 2 and not paths.journal.exists()


def test_a_busy_store_is_refused_after_the_timeout(tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    monkeypatch.setattr(rv, "LOCK_TIMEOUT", 0.2)
    staged, go_on = _hold_commit(monkeypatch)
    slow = threading.Thread(target=rv.save_region, name="slow",
                            args=(store, edits.delete_objects(lab, [1])))
    slow.start()
    assert staged.wait(20)
    with pytest.raises(rv.StoreBusy, match="another save"):
        rv.record_decisions(paths, [2], "accept")
    with pytest.raises(rv.StoreBusy):
        rv.save_region(store, edits.delete_objects(lab, [4]))
    go_on.set()
    slow.join(30)
    assert_array_equal(read_labels(paths.labels).data.compute(), edits.delete_objects(lab, [1]))
    rv.record_decisions(paths, [2], "accept")  # free again


def test_another_process_holding_the_lock_is_waited_for(tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
         "sys.stdin.read()", str(paths.lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(rv, "LOCK_TIMEOUT", 0.3)
        with pytest.raises(rv.StoreBusy, match="another process"):
            rv.save_region(store, edits.delete_objects(lab, [1]))
        with pytest.raises(rv.StoreBusy):
            rv.LabelStore.open(paths.results, "cells")  # settling a journal waits too
    finally:
        holder.communicate("", timeout=30)
    assert_array_equal(read_labels(paths.labels).data.compute(), lab)
    rv.save_region(store, edits.delete_objects(lab, [1]))
    assert_array_equal(read_labels(paths.labels).data.compute(), edits.delete_objects(lab, [1]))


def test_the_journal_is_never_recreated_replaced_or_skipped(tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    before = chunk_files(paths.labels)
    store = rv.LabelStore.open(paths.results, "cells")
    # the manifest is not written into a folder that is gone
    with pytest.raises(FileNotFoundError):
        rv._write_json(paths.journal / rv.JOURNAL_FILE, {})
    assert not paths.journal.exists()
    # a journal removed while a save stages its files: the save stops, the store is untouched
    real = rv._Journal.commit

    def vanish(self, *args, **kwargs):
        shutil.rmtree(self.root)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(rv._Journal, "commit", vanish)
    with pytest.raises(rv.JournalError, match="removed or changed"):
        rv.save_region(store, edits.delete_objects(lab, [1]))
    monkeypatch.setattr(rv._Journal, "commit", real)
    assert not paths.journal.exists() and chunk_files(paths.labels) == before
    # an existing journal is not deleted by a new one
    paths.journal.mkdir()
    (paths.journal / "mine").write_text("x")
    with pytest.raises(rv.JournalError, match="exists"):
        rv._Journal(paths)
    assert (paths.journal / "mine").exists()
    shutil.rmtree(paths.journal)
    # a staged file missing when the journal is rolled forward is an error, not skipped
    monkeypatch.setattr(rv, "_apply", lambda paths, manifest: None)
    rv.save_region(store, edits.merge_objects(lab, [2, 3]))  # staged, manifest written
    monkeypatch.undo()
    (paths.journal / "new" / "labels/cells.ome.zarr/0/c/1/1").unlink()
    with pytest.raises(rv.JournalError, match="missing"):
        rv.LabelStore.open(paths.results, "cells")
    assert chunk_files(paths.labels)["0/c/1/1"] == before["0/c/1/1"]


# --- journals, versions and review records are input ---------------------------------------

VICTIM = b"a file outside the results folder\n"
EVIL = b"planted by a crafted journal\n"
CHUNK = "labels/cells.ome.zarr/0/c/0/0"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def plant_victim(tmp_path):
    """A file beside the results folder that no journal or version may touch."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    os.utime(victim, ns=(1_000_000_000, 1_000_000_000))
    return victim


def split_tree(tmp_path, paths, journal_name):
    """tree(tmp_path) without the lock file: (the rest, the journal folder's own tree)."""
    j = paths.journal.parent.relative_to(tmp_path).as_posix() + "/" + journal_name
    lock = paths.lock.relative_to(tmp_path).as_posix()
    rest, inner = {}, {}
    for k, v in tree(tmp_path).items():
        if k == j or k.startswith(j + "/"):
            inner[k[len(j):]] = v
        elif k != lock:
            rest[k] = v
    return rest, inner


def craft_journal(paths, entries, *, staged=(), raw=None, **fields):
    """The journal an interrupted save leaves, with the given entries and staged files
    ({path below new/: bytes}), or with ``raw`` as its journal.json."""
    journal = paths.journal
    (journal / "new").mkdir(parents=True)
    (journal / "old").mkdir()
    for rel, content in dict(staged).items():
        p = journal / "new" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    manifest = {"version": "20250101T000000000000Z", "time": "2025-01-01T00:00:00.000000Z",
                "identity": rv._identity(paths), "entries": entries, **fields}
    (journal / rv.JOURNAL_FILE).write_text(json.dumps(manifest) if raw is None else raw)


def _chunk_entry():  # a well-formed first entry: were the journal applied, the store changes
    return {"path": CHUNK, "new": True, "old": True, "sha256": sha(EVIL)}


def _dotdot_write(tmp_path, paths):
    craft_journal(paths, [_chunk_entry(),
                          {"path": "../victim.txt", "new": True, "old": True, "sha256": sha(EVIL)},
                          {"path": "../planted.txt", "new": True, "old": False}],
                  staged={CHUNK: EVIL, "../victim.txt": EVIL, "../planted.txt": EVIL})


def _dotdot_delete(tmp_path, paths):
    craft_journal(paths, [_chunk_entry(), {"path": "../victim.txt", "new": False, "old": True}],
                  staged={CHUNK: EVIL})


def _absolute(tmp_path, paths):
    craft_journal(paths, [_chunk_entry(),
                          {"path": str(tmp_path / "victim.txt"), "new": False, "old": True}],
                  staged={CHUNK: EVIL})


def _link_in_store(tmp_path, paths):
    (paths.labels / "0" / "c" / "out").symlink_to(tmp_path, target_is_directory=True)
    craft_journal(paths, [_chunk_entry(),
                          {"path": CHUNK.replace("0/0", "out/victim.txt"), "new": False,
                           "old": True},
                          {"path": CHUNK.replace("0/0", "out/planted.txt"), "new": True,
                           "old": False}],
                  staged={CHUNK: EVIL, CHUNK.replace("0/0", "out/planted.txt"): EVIL})


def _linked_staged_file(tmp_path, paths):
    # os.replace would move the victim itself into the store
    craft_journal(paths, [{"path": CHUNK, "new": True, "old": True}])
    (paths.journal / "new" / CHUNK).parent.mkdir(parents=True)
    (paths.journal / "new" / CHUNK).symlink_to(tmp_path / "victim.txt")


def _linked_journal(tmp_path, paths):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "old").mkdir()
    (elsewhere / rv.JOURNAL_FILE).write_text(json.dumps(
        {"version": "v", "time": "t", "identity": rv._identity(paths),
         "entries": [{"path": CHUNK, "new": False, "old": True}]}))
    paths.journal.symlink_to(elsewhere, target_is_directory=True)


def _version_name(tmp_path, paths):
    craft_journal(paths, [_chunk_entry()], staged={CHUNK: EVIL}, version="../../../victim.txt")


def _schema_type(tmp_path, paths):
    craft_journal(paths, [{"path": CHUNK, "new": "yes", "old": True}], staged={CHUNK: EVIL})


def _schema_extra(tmp_path, paths):
    craft_journal(paths, [_chunk_entry()], staged={CHUNK: EVIL}, then="rm -rf ~")


def _schema_sha(tmp_path, paths):
    craft_journal(paths, [{**_chunk_entry(), "sha256": "../" * 21 + "a"}], staged={CHUNK: EVIL})


def _unparseable(tmp_path, paths):
    craft_journal(paths, [], staged={CHUNK: EVIL}, raw='{"version": "v", "entries": [')


CRAFTED = {  # how the journal is crafted, what the one warning names
    "dotdot-write": (_dotdot_write, r"path '\.\./victim\.txt' is not a plain relative path"),
    "dotdot-delete": (_dotdot_delete, r"path '\.\./victim\.txt' is not a plain relative path"),
    "absolute": (_absolute, r"victim\.txt' is not a plain relative path"),
    "link-in-store": (_link_in_store, r"out/victim\.txt' leads outside the label store"),
    "linked-staged-file": (_linked_staged_file, r"staged file .* leads outside new"),
    "linked-journal": (_linked_journal, r"the journal folder .* is a link"),
    "version-name": (_version_name, r"version name '\.\./\.\./\.\./victim\.txt' is not a plain"),
    "schema-type": (_schema_type, r"does not match the journal schema at \$\.entries\[0\]\.new"),
    "schema-extra": (_schema_extra, r"does not match the journal schema.*'then' was unexpected"),
    "schema-sha256": (_schema_sha, r"does not match the journal schema at "
                                   r"\$\.entries\[0\]\.sha256"),
    "unparseable": (_unparseable, r"journal\.json cannot be read"),
}


@pytest.mark.parametrize("opener", ["recover", "open"])
@pytest.mark.parametrize("crafted", list(CRAFTED))
def test_a_crafted_journal_is_set_aside_never_applied(tmp_path, caplog, crafted, opener):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    victim = plant_victim(tmp_path)
    craft, reason = CRAFTED[crafted]
    craft(tmp_path, paths)
    before, journal = split_tree(tmp_path, paths, paths.journal.name)
    assert journal  # the crafted journal

    caplog.set_level(logging.WARNING)
    if opener == "recover":
        assert rv.recover(paths) == "set aside"
        store = rv.LabelStore.open(paths.results, "cells")  # as the widget does
        assert store.recovered is None
    else:
        store = rv.LabelStore.open(paths.results, "cells")
        assert store.recovered == "set aside"

    # nothing outside or inside the results folder was written, moved or removed ...
    assert victim.read_bytes() == VICTIM and victim.stat().st_mtime_ns == 1_000_000_000
    (aside,) = paths.journal.parent.glob(f"{paths.journal.name}.bad-*")
    after, moved = split_tree(tmp_path, paths, aside.name)
    assert after == before
    # ... but the journal, moved aside as it was, for a person to look at
    assert not os.path.lexists(paths.journal)
    if crafted == "linked-journal":
        assert aside.is_symlink() and (tmp_path / "elsewhere" / rv.JOURNAL_FILE).exists()
    else:
        assert moved == journal
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert str(paths.labels) in message and "NOT applied" in message and aside.name in message
    assert re.search(reason, message), message
    # the store opens and saves normally
    assert_array_equal(store.read(), lab)
    rv.save_region(store, edits.delete_objects(lab, [1]))
    assert_array_equal(read_labels(paths.labels).data.compute(), edits.delete_objects(lab, [1]))
    assert victim.read_bytes() == VICTIM and not (tmp_path / "planted.txt").exists()


def test_a_store_behind_linked_folders_still_rolls_forward(tmp_path, monkeypatch, caplog):
    """Links in the folders above the store (results/labels on another disk) are fine."""
    lab = labels_2d()
    paths = make_results(tmp_path / "real", lab)
    (tmp_path / "results").symlink_to(paths.results, target_is_directory=True)
    shutil.move(paths.results / "labels", tmp_path / "labels-disk")
    (paths.results / "labels").symlink_to(tmp_path / "labels-disk", target_is_directory=True)
    paths = layout.sample_paths(tmp_path / "results", "cells")
    store = rv.LabelStore.open(paths.results, "cells")
    edited = edits.delete_objects(store.read(), [1, 3])
    _save_killed_after_the_first_file(store, edited, monkeypatch)
    caplog.set_level(logging.WARNING)
    assert rv.recover(paths) == "rolled forward"
    assert [r.getMessage() for r in caplog.records] == [
        f"{paths.labels}: an interrupted save was completed"]
    assert_array_equal(read_labels(paths.labels).data.compute(), edited)
    (version,) = rv.restorable_versions(paths)
    rv.restore_version(rv.LabelStore.open(paths.results, "cells"), version)
    assert_array_equal(read_labels(paths.labels).data.compute(), lab)


def test_a_save_never_writes_through_a_link_out_of_the_store(tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    outside = tmp_path / "outside"
    shutil.copytree(paths.labels / "0" / "c" / "1", outside)  # chunk row 1, moved out
    shutil.rmtree(paths.labels / "0" / "c" / "1")
    (paths.labels / "0" / "c" / "1").symlink_to(outside, target_is_directory=True)
    store = rv.LabelStore.open(paths.results, "cells")
    before = tree(tmp_path)
    with pytest.raises(InputError, match=r"cannot save: path 'labels/cells\.ome\.zarr/0/c/1/1'"
                                         " leads outside the label store"):
        rv.save_region(store, edits.merge_objects(lab, [2, 3]))  # chunk (1, 1)
    assert tree(outside) == {k[len("outside/"):]: v for k, v in before.items()
                             if k.startswith("outside/")}
    assert rv.recover(paths) == "rolled back"  # the staged save is dropped
    assert tree(tmp_path) == before
    # a level path leading out of the store is refused on opening
    meta = json.loads((paths.labels / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = "../../../outside"
    (paths.labels / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"multiscales dataset path '\.\./\.\./\.\./outside' is not"):
        rv.LabelStore.open(paths.results, "cells")


def _version_dotdot(tmp_path, paths, folder, info):
    info["files"].append({"path": "../victim.txt", "existed": False})  # would delete it


def _version_dotdot_copy(tmp_path, paths, folder, info):
    (paths.versions / "victim.txt").write_bytes(EVIL)  # would overwrite it
    info["files"].append({"path": "../victim.txt", "existed": True})


def _version_absolute(tmp_path, paths, folder, info):
    info["files"].append({"path": str(tmp_path / "victim.txt"), "existed": False})


def _version_linked_copy(tmp_path, paths, folder, info):
    copy = folder / CHUNK
    copy.unlink()
    copy.symlink_to(tmp_path / "victim.txt")  # would be copied into the store


def _version_schema(tmp_path, paths, folder, info):
    info["files"][0]["existed"] = "yes"


CRAFTED_VERSIONS = {
    "dotdot": (_version_dotdot, r"path '\.\./victim\.txt' is not a plain relative path"),
    "dotdot-copy": (_version_dotdot_copy, r"path '\.\./victim\.txt' is not a plain"),
    "absolute": (_version_absolute, r"victim\.txt' is not a plain relative path"),
    "linked-copy": (_version_linked_copy, r"saved copy '.*0/c/0/0' leads outside"),
    "schema": (_version_schema, r"does not match the version schema at \$\.files\[0\]"),
}


@pytest.mark.parametrize("crafted", list(CRAFTED_VERSIONS))
def test_a_crafted_version_is_never_restored(tmp_path, caplog, crafted):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    victim = plant_victim(tmp_path)
    store = rv.LabelStore.open(paths.results, "cells")
    version = rv.save_region(store, edits.delete_objects(lab, [1]),
                             actions=[{"action": "delete", "ids": [1]}]).version
    assert rv.restorable_versions(paths) == [version]
    folder = paths.versions / version
    info = json.loads((folder / "version.json").read_text())
    craft, reason = CRAFTED_VERSIONS[crafted]
    craft(tmp_path, paths, folder, info)
    (folder / "version.json").write_text(json.dumps(info))
    before = tree(tmp_path)
    with pytest.raises(InputError, match=reason) as raised:
        rv.restore_version(store, version)
    assert raised.value.path == str(folder / "version.json")
    assert "cannot be restored" in str(raised.value)
    assert tree(tmp_path) == before  # nothing written, moved or removed, victim included
    assert victim.read_bytes() == VICTIM and victim.stat().st_mtime_ns == 1_000_000_000
    caplog.set_level(logging.WARNING)
    assert rv.restorable_versions(paths) == [] and rv.list_versions(paths) == []  # skipped
    assert any("not a valid version" in r.getMessage() and re.search(reason, r.getMessage())
               for r in caplog.records)
    assert_array_equal(read_labels(paths.labels).data.compute(), edits.delete_objects(lab, [1]))
    # a version name that is not one folder name is refused before anything is read
    for name in ("../" + version, f"{version}/../{version}", str(folder), ""):
        with pytest.raises(InputError, match=r"cannot restore: version name .* is not a plain"):
            rv.restore_version(store, name)
    assert tree(tmp_path) == before


def test_a_bad_review_record_is_set_aside_and_a_new_one_started(tmp_path, caplog):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    caplog.set_level(logging.WARNING)
    paths.review.write_text("{not json")
    assert rv.read_review(paths)["entries"] == []  # treated as missing (it used to raise)
    assert "treated as missing" in caplog.records[-1].getMessage()
    store = rv.LabelStore.open(paths.results, "cells")
    assert store.set_aside is None and not paths.review.exists()
    (aside,) = paths.labels.parent.glob("cells.review.*.bad.json")
    assert aside.read_text() == "{not json"  # kept for a person to look at
    assert "moved aside" in caplog.records[-1].getMessage()
    rv.record_decisions(paths, [2], "accept")
    assert rv.decisions(rv.read_review(paths)) == {2: "accept"}
    # the wrong shape, then a link (to a file outside): the same
    for bad in ('{"entries": "rm -rf ~"}', '{"entries": [{"action": "accept", "ids": ["x"]}]}',
                None):
        paths.review.unlink()
        if bad is None:
            (tmp_path / "outside.json").write_text('{"entries": []}')
            paths.review.symlink_to(tmp_path / "outside.json")
        else:
            paths.review.write_text(bad)
        assert rv.read_review(paths)["entries"] == []
        rv.save_region(store, store.read())  # nothing changed: nothing written
        rv.record_decisions(paths, [3], "reject")
        assert rv.decisions(rv.read_review(paths)) == {3: "reject"}
    assert len(list(paths.labels.parent.glob("cells.review.*.bad.json"))) == 4
    assert (tmp_path / "outside.json").read_text() == '{"entries": []}'


# --- a new segmentation starts a new review ---------------------------------------------------


def rerun_segment(paths, lab):
    """What the workflow does when it segments a sample again: a new store and table."""
    new = np.zeros_like(lab)
    for a, b in {1: 4, 2: 1, 3: 2, 4: 3}.items():
        new[lab == a] = b
    shutil.rmtree(paths.labels)
    write_ome_zarr(paths.labels, new, axes="yx", spacing=[1.0, 1.0], unit=None, chunks=[8, 8],
                   name="labels")
    write_table(measure_store(paths.labels, image_path=paths.image,
                              probabilities_path=paths.probabilities), paths.table)
    return new


def test_a_new_segmentation_sets_the_old_review_and_versions_aside(tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    version = rv.save_region(store, edits.delete_objects(lab, [1]),
                             actions=[{"action": "delete", "ids": [1]}]).version
    rv.record_decisions(paths, [2], "reject")
    version2 = rv.restore_version(store, version).version  # and our own saves keep it
    reopened = rv.LabelStore.open(paths.results, "cells")
    assert reopened.set_aside is None
    assert rv.list_versions(paths) == [version, version2]
    assert rv.decisions(rv.read_review(paths)) == {2: "reject"}
    old_review = paths.review.read_text()

    time.sleep(0.01)
    new = rerun_segment(paths, lab)
    assert rv.decisions(rv.read_review(paths)) == {}  # not shown for the new objects
    with pytest.raises(InputError, match="written again"):
        rv.save_region(store, edits.delete_objects(new, [1]))  # opened before the rerun
    store = rv.LabelStore.open(paths.results, "cells")
    assert store.set_aside is not None and store.set_aside.name.endswith(".stale.json")
    assert store.set_aside.read_text() == old_review  # moved, not deleted
    (aside,) = paths.labels.parent.glob("cells.versions.*.stale")
    assert sorted(p.name for p in aside.iterdir()) == [version, version2]
    assert not paths.review.exists() and rv.list_versions(paths) == []
    with pytest.raises(InputError, match="earlier segmentation"):
        rv.restore_version(store, version2)
    assert_array_equal(read_labels(paths.labels).data.compute(), new)
    # the new store's review starts clean, and keeps going
    rv.record_decisions(paths, [1], "accept")
    assert rv.decisions(rv.read_review(paths)) == {1: "accept"}
    assert rv.LabelStore.open(paths.results, "cells").set_aside is None


# --- undo in order -----------------------------------------------------------------------------


def test_only_the_latest_save_can_be_undone_and_ids_stay_unique(tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    store = rv.LabelStore.open(paths.results, "cells")
    a = rv.save_region(store, edits.delete_objects(lab, [3]),
                       actions=[{"action": "delete", "ids": [3]}]).version
    after_a = read_labels(paths.labels).data.compute()
    painted = after_a.copy()
    painted[6:10, 6:10] = 5  # a new object across four chunks
    b = rv.save_region(store, painted).version
    assert store.max_id() == 5
    assert rv.restorable_versions(paths) == [b]
    with pytest.raises(InputError, match=f"restore the later versions first: {b}"):
        rv.restore_version(store, a)
    assert_array_equal(read_labels(paths.labels).data.compute(), painted)  # untouched
    undo_b = rv.restore_version(store, b).version
    assert_array_equal(read_labels(paths.labels).data.compute(), after_a)
    assert store.max_id() == 5  # never lowered: 5 was given out
    assert rv.restorable_versions(paths) == [a, undo_b]  # undo A next, or redo B
    undo_a = rv.restore_version(store, a).version
    assert_array_equal(read_labels(paths.labels).data.compute(), lab)
    assert store.max_id() == 5
    fresh = measure_store(paths.labels, image_path=paths.image,
                          probabilities_path=paths.probabilities)
    pd.testing.assert_frame_equal(pd.read_csv(paths.table), fresh, check_dtype=False, rtol=1e-9)
    assert rv.restorable_versions(paths) == [undo_a]
    with pytest.raises(InputError, match="restorable now"):
        rv.restore_version(store, undo_b)
    # a stroke with the next free id made elsewhere gets that id, not a used one
    region = store.read((slice(0, 8), slice(0, 8)))
    region[0, 0] = store.max_id() + 1
    assert rv.save_region(store, region, (slice(0, 8), slice(0, 8))).ids == [6]


# --- ids ------------------------------------------------------------------------------------


def test_ids_too_large_and_ids_taken_without_a_table(tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    before = chunk_files(paths.labels)
    store = rv.LabelStore.open(paths.results, "cells")
    big = lab.astype(np.int64)
    big[0, 0] = 2**32 + 1  # would wrap round to 1 in the store's uint32
    with pytest.raises(ValueError, match="does not fit"):
        rv.save_region(store, big)
    assert chunk_files(paths.labels) == before
    # the table is gone: a painted id used elsewhere is still recognised as taken
    paths.table.unlink()
    box = (slice(16, 24), slice(16, 32))
    region = store.read(box)
    region[0, 0:2] = 2  # object 2 lies outside the region
    result = rv.save_region(store, region, box)
    assert result.renamed == {2: 5} and result.table == "missing"
    saved = read_labels(paths.labels).data.compute()
    assert (saved == 2).sum() == (lab == 2).sum() and (saved[16, 16:18] == 5).all()
    # the whole image loaded: nothing outside it, ids are the user's
    whole = saved.copy()
    whole[0, 0] = 3
    assert rv.save_region(store, whole).renamed == {}


def test_decisions_are_recorded(tmp_path):
    paths = make_results(tmp_path, labels_2d())
    rv.record_decisions(paths, [2], "accept")
    rv.record_decisions(paths, [3, 2], "reject")
    review = rv.read_review(paths)
    assert [(e["action"], e["ids"]) for e in review["entries"]] == [("accept", [2]),
                                                                    ("reject", [3, 2])]
    assert rv.decisions(review) == {2: "reject", 3: "reject"}
    with pytest.raises(ValueError, match="accept"):
        rv.record_decisions(paths, [1], "maybe")


def test_no_results_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no segmentation results"):
        layout.list_samples(tmp_path)


# --- export as training data ----------------------------------------------------------------


def test_export_is_found_by_the_workflow_as_training_data(tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab, spacing=[0.5, 0.5])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    store = rv.LabelStore.open(paths.results, "cells")
    rv.save_region(store, edits.delete_objects(store.read(), [1]))
    folder = curate.export_training(store)
    assert folder == tmp_path / "resources/curated/cells"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["cells"]  # no temporaries
    found = curated_samples(folder.parent)
    assert found == [("curated-cells", str(folder / "image.tif"), str(folder / "labels.tif"))]
    image, labels = read_image(folder / "image.tif"), read_labels(folder / "labels.tif")
    assert_array_equal(labels.data.compute(), edits.delete_objects(lab, [1]))
    assert_array_equal(image.data.compute(), read_image(paths.image).data.compute()[0])
    assert image.spacing == labels.spacing == (0.5, 0.5)
    # a region export names the region
    part = curate.export_training(store, box=(slice(8, 16), slice(0, 16)))
    assert part.name == "cells-y8-x0"
    assert_array_equal(read_labels(part / "labels.tif").data.compute(), lab[8:16, 0:16])
    # the workflow plans preprocessing and targets for them and trains again
    proc = snakemake(tmp_path, "-n", "--cores", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    jobs = job_table(proc.stdout)
    # 4 demo samples + 2 curated ones; targets for 2 demo + 2 curated training samples
    assert jobs["preprocess"] == 6 and jobs["targets"] == 4 and jobs["train"] == 1
    assert "results/targets/curated-cells.zarr" in proc.stdout
    assert "results/targets/curated-cells-y8-x0.zarr" in proc.stdout
    assert "resources/curated/cells/image.tif" in proc.stdout


def test_export_follows_data_curated_and_refuses_when_off(tmp_path):
    paths = make_results(tmp_path, labels_2d())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"curated": "fixes"}}))
    assert curate.curated_folder(paths.results) == tmp_path / "fixes"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"curated": None}}))
    with pytest.raises(InputError, match="switched off"):
        curate.export_training(rv.LabelStore.open(paths.results, "cells"))
