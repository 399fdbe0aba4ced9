"""Resume markers of partial stores (``unetpipe.io.resume``).

The predict and segment stages resume through these functions in test_predict,
test_segment and test_workflow (a killed run picks up where it stopped). Here:
each function on its own, on tiny hand-made stores.
"""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from unetpipe.io.resume import (
    DONE_DIR,
    finish,
    input_signature,
    mark_done,
    markers,
    partial_path,
    resume_state,
)

FINGERPRINT = {"input": "a.tif", "block": [8, 8], "tta": False, "shape": [16, 24]}


def partial_store(path, fingerprint, *, done=(), complete=False, extra=None):
    """A partial output as a stage leaves it: a group whose attributes carry the
    fingerprint, an array, and one marker per finished block."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("0", shape=(16, 24), chunks=(8, 8), dtype="uint8", fill_value=0)
    attrs = {"stage": "predict", "fingerprint": fingerprint, **(extra or {})}
    if complete:
        attrs["complete"] = True
    root.attrs["unetpipe"] = attrs
    (path / DONE_DIR).mkdir()
    for index in done:
        mark_done(path / DONE_DIR, index)
    return path


def stored_attrs(path):
    return dict(zarr.open_group(str(path), mode="r").attrs["unetpipe"])


# --- names and markers ---------------------------------------------------------------


def test_partial_path_is_hidden_beside_the_output():
    assert partial_path("results/cells.ome.zarr") == Path("results/.cells.ome.zarr.partial")
    assert partial_path(Path("/r/p/x.zarr")) == Path("/r/p/.x.zarr.partial")
    assert partial_path("out.zarr") == Path(".out.zarr.partial")


def test_markers_round_trip_block_indices_of_any_dimension(tmp_path):
    assert markers(tmp_path / "none") == []  # no folder yet: nothing done
    blocks = [(0, 0), (3, 12), (1, 0, 7), (10,), (2, 0, 0, 5)]
    for index in blocks:
        mark_done(tmp_path, index)
    mark_done(tmp_path, (3, 12))  # twice: still one marker, no error
    assert sorted(os.listdir(tmp_path)) == ["0.0", "1.0.7", "10", "2.0.0.5", "3.12"]
    assert all((tmp_path / name).stat().st_size == 0 for name in os.listdir(tmp_path))
    assert sorted(markers(tmp_path)) == sorted(blocks)
    # numpy integers, as itertools over a grid may give them, are written as plain numbers
    mark_done(tmp_path, (np.int64(5), np.uint16(6)))
    assert (tmp_path / "5.6").exists() and (5, 6) in markers(tmp_path)


def test_markers_skip_names_that_are_not_block_indices(tmp_path):
    for name in (".DS_Store", "notes.txt", "1.x", "2.3"):
        (tmp_path / name).touch()
    assert markers(tmp_path) == [(2, 3)]


# --- input signatures ------------------------------------------------------------------


def test_input_signature_of_a_file_changes_when_the_file_does(tmp_path):
    path = tmp_path / "image.tif"
    path.write_bytes(b"1234")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    first = input_signature(str(path))
    assert first == {"mtime_ns": 1_000_000_000, "size": 4}
    assert input_signature(str(path)) == first  # nothing changed: the same
    path.write_bytes(b"4321")  # same size, rewritten later
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert input_signature(str(path)) == {"mtime_ns": 2_000_000_000, "size": 4}
    path.write_bytes(b"12345")
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))  # same time, other size
    assert input_signature(str(path)) == {"mtime_ns": 2_000_000_000, "size": 5}


@pytest.mark.parametrize("zarr_format, names", [
    (3, ["0/zarr.json", "zarr.json"]),
    (2, ["0/.zarray", "0/.zattrs", ".zattrs", ".zgroup"]),
])
def test_input_signature_of_a_store_stats_its_metadata(tmp_path, zarr_format, names):
    path = tmp_path / "image.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs["multiscales"] = [{"name": "x"}]
    root.create_array("0", shape=(10, 10), chunks=(5, 5), dtype="uint8", fill_value=0)
    root["0"].attrs["a"] = 1
    sig = input_signature(str(path))
    assert sorted(sig) == sorted(names)
    for name in names:
        st = (path / name).stat()
        assert sig[name] == [st.st_mtime_ns, st.st_size]
    assert input_signature(str(path)) == sig
    # the store written again with another shape: its array metadata differ
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.create_array("0", shape=(1000, 10), chunks=(5, 5), dtype="uint8", fill_value=0)
    assert input_signature(str(path))[names[0]] != sig[names[0]]
    assert input_signature(str(tmp_path / "empty-folder")) == {}


# --- resume_state and finish --------------------------------------------------------------


def test_no_partial_output_starts_afresh(tmp_path):
    assert resume_state(tmp_path / ".o.partial", FINGERPRINT, resume=True, stage="t") is None


def test_a_partial_output_made_the_same_way_resumes_its_done_blocks(tmp_path, caplog):
    part = partial_store(tmp_path / ".o.partial", FINGERPRINT, done=[(0, 1), (1, 2)])
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        done = resume_state(part, FINGERPRINT, resume=True, stage="predict")
    assert done == {(0, 1), (1, 2)}
    assert part.is_dir() and (part / "0").is_dir()  # the store is kept as it is
    assert "predict: resuming" in caplog.text and "2 block(s) already done" in caplog.text
    # the fingerprint is compared as JSON: tuples match the lists stored
    as_tuples = {**FINGERPRINT, "block": (8, 8), "shape": (16, 24)}
    assert resume_state(part, as_tuples, resume=True, stage="predict") == {(0, 1), (1, 2)}


def test_a_lost_marker_folder_is_made_again_and_means_nothing_done(tmp_path):
    part = partial_store(tmp_path / ".o.partial", FINGERPRINT, done=[(0, 0)])
    (part / DONE_DIR / "0.0").unlink()
    (part / DONE_DIR).rmdir()
    assert resume_state(part, FINGERPRINT, resume=True, stage="predict") == set()
    assert (part / DONE_DIR).is_dir()  # ready for the markers of this run


def test_a_complete_partial_output_is_only_finished(tmp_path):
    part = partial_store(tmp_path / ".o.partial", FINGERPRINT, complete=True)
    assert resume_state(part, FINGERPRINT, resume=True, stage="predict") == "complete"
    assert part.is_dir()


@pytest.mark.parametrize("change, named", [
    ({"block": [16, 16]}, "block"),
    ({"tta": True, "input": "b.tif"}, "input, tta"),
    ({"new_setting": 1}, "new_setting"),
])
def test_a_partial_output_made_otherwise_is_removed(tmp_path, caplog, change, named):
    part = partial_store(tmp_path / ".o.partial", FINGERPRINT, done=[(0, 0)])
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        got = resume_state(part, {**FINGERPRINT, **change}, resume=True, stage="segment")
    assert got is None and not part.exists()
    assert f"segment: starting afresh: the partial output {part} is not used (it was made " \
           f"with other {named})" in caplog.text
    assert os.listdir(tmp_path) == []


def test_resume_off_removes_even_a_matching_partial_output(tmp_path, caplog):
    part = partial_store(tmp_path / ".o.partial", FINGERPRINT, done=[(0, 0)], complete=True)
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        assert resume_state(part, FINGERPRINT, resume=False, stage="predict") is None
    assert not part.exists() and "(resume is off)" in caplog.text


def test_a_partial_output_that_is_no_store_is_removed(tmp_path, caplog):
    part = tmp_path / ".o.partial"
    (part / "junk").mkdir(parents=True)  # e.g. killed before its metadata were written
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        assert resume_state(part, FINGERPRINT, resume=True, stage="predict") is None
    assert not part.exists()
    assert "with other block, input, shape, tta" in caplog.text


def test_finish_marks_complete_and_drops_markers_and_scratch(tmp_path):
    part = partial_store(tmp_path / ".o.partial", FINGERPRINT, done=[(0, 0), (1, 2)],
                         extra={"classes": ["background", "cell"]})
    (part / "scratch").mkdir()
    (part / "scratch" / "x").write_text("tmp")
    (part / "keep").mkdir()
    finish(part, remove=("scratch", "absent"))
    assert stored_attrs(part) == {"stage": "predict", "fingerprint": FINGERPRINT,
                                  "classes": ["background", "cell"], "complete": True}
    assert sorted(os.listdir(part)) == ["0", "keep", "zarr.json"]
    # what a run killed just after finish() finds
    assert resume_state(part, FINGERPRINT, resume=True, stage="predict") == "complete"
