"""What a command may write where (unetpipe.io.outputs): outputs and inputs, the
kinds of output that may be replaced, one writer per output, a full disk."""

import errno
import json
import os
import threading

import numpy as np
import pytest

from unetpipe.core.errors import InputError
from unetpipe.io.images import write_ome_zarr
from unetpipe.io.outputs import (
    KINDS,
    check_free_space,
    check_inputs,
    check_output,
    claim_output,
    lock_path,
    output_lock,
)


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_output_on_in_or_around_an_input_is_refused_even_with_overwrite(here):
    (here / "x.ome.zarr").mkdir()
    cases = {"x.ome.zarr": "is the input", "x.ome.zarr/sub/m.json": "is inside the input",
             ".": "holds the input"}
    for out, why in cases.items():
        with pytest.raises(InputError, match=why):
            check_output(out, kind="metrics", inputs=[None, "x.ome.zarr"], overwrite=True)
    # a link to the input is the input
    os.symlink("x.ome.zarr", "link.ome.zarr")
    with pytest.raises(InputError, match=r"is the input x\.ome\.zarr"):
        check_inputs("link.ome.zarr", ["x.ome.zarr"])
    with pytest.raises(InputError, match="holds the working directory"):
        check_inputs(here.parent, [])
    with pytest.raises(InputError, match="is not a file or folder that can be written"):
        check_inputs("/", [])
    assert check_inputs("y.json", ["x.ome.zarr"]) == here / "y.json"
    assert sorted(p.name for p in here.iterdir()) == ["link.ome.zarr", "x.ome.zarr"]


def test_only_the_same_kind_of_unetpipe_output_is_replaced(here):
    write_ome_zarr("img.ome.zarr", np.zeros((1, 8, 8), np.float32), axes="cyx",
                   spacing=(1.0, 1.0), attrs={"percentiles": [1, 99]})
    (here / "m.json").write_text(json.dumps({"sample": "a", "scores": {}}))
    (here / "t.csv").write_text("label,area\n1,4\n")
    (here / "notes.txt").write_text("mine\n")
    (here / "empty").mkdir()
    assert check_output("img.ome.zarr", kind="preprocessed").name == "img.ome.zarr"
    assert check_output("m.json", kind="metrics") and check_output("t.csv", kind="table")
    assert check_output("empty", kind="labels")  # nothing in it to lose
    assert check_output("new.ome.zarr", kind="labels")  # nothing there at all
    refusals = [("img.ome.zarr", "labels", "a folder that is not a labels store"),
                ("m.json", "table", "a file that is not an object table"),
                ("t.csv", "metrics", "a file that is not a metrics JSON"),
                ("notes.txt", "summary", "a file that is not a metrics summary")]
    for out, kind, why in refusals:
        with pytest.raises(InputError, match=f"{out}: exists and is {why} written by unetpipe"):
            check_output(out, kind=kind)
        assert check_output(out, kind=kind, overwrite=True)  # replaced all the same
    assert (here / "notes.txt").read_text() == "mine\n"  # checks change nothing
    assert set(KINDS) >= {"preprocessed", "targets", "probabilities", "labels", "table",
                          "metrics", "summary", "model", "package", "figure", "demo"}


def test_a_model_folder_is_written_into_only_where_its_files_are_unetpipes(here):
    (here / "model").mkdir()
    (here / "model" / "notes.txt").write_text("mine\n")
    assert check_output("model", kind="model")  # training adds its files beside yours
    (here / "model" / "history.csv").write_text("iteration,loss\n1,0.5\n")
    assert check_output("model", kind="model")
    (here / "model" / "checkpoint_best.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a model folder"):
        check_output("model", kind="model")


def test_a_second_writer_is_refused_naming_the_first(here):
    with output_lock("p.ome.zarr"):
        info = json.loads(lock_path("p.ome.zarr").read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["since"]
        errors = []

        def second():
            try:
                with output_lock("p.ome.zarr"):
                    pass
            except InputError as e:
                errors.append(str(e))

        t = threading.Thread(target=second)
        t.start()
        t.join(10)
        assert len(errors) == 1
        assert errors[0].startswith(f"p.ome.zarr: is being written by process {os.getpid()} on ")
    assert not lock_path("p.ome.zarr").exists()  # removed when the writer ends


def test_a_stale_lock_file_is_taken_over(here):
    lock_path("p.ome.zarr").write_text(json.dumps({"pid": 999999, "host": "x", "since": "t"}))
    with output_lock("p.ome.zarr"):
        assert json.loads(lock_path("p.ome.zarr").read_text())["pid"] == os.getpid()
    assert not lock_path("p.ome.zarr").exists()
    assert lock_path(".").name == f".{here.name}.lock"


def test_claim_removes_only_a_partial_the_run_began(here):
    partial = here / ".p.ome.zarr.partial"
    with pytest.raises(InputError, match="bad block"):
        with claim_output("p.ome.zarr", kind="probabilities", partial=partial):
            partial.mkdir()
            raise InputError("in.ome.zarr", "bad block")
    assert not partial.exists()
    partial.mkdir()  # an earlier run's work, for a rerun with the right input
    with pytest.raises(InputError):
        with claim_output("p.ome.zarr", kind="probabilities", partial=partial):
            raise InputError("in.ome.zarr", "bad block")
    assert partial.exists()


def test_a_full_disk_names_the_output_and_removes_the_partial(here):
    partial = here / ".p.ome.zarr.partial"
    partial.mkdir()
    with pytest.raises(InputError, match=r"p.ome.zarr: the disk is full .* the partial output "
                                         "was removed"):
        with claim_output("p.ome.zarr", kind="probabilities", partial=partial):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not partial.exists() and not lock_path("p.ome.zarr").exists()
    with pytest.raises(PermissionError):  # other errors pass unchanged
        with claim_output("p.ome.zarr", kind="probabilities", partial=partial):
            raise PermissionError(errno.EACCES, "denied")


def test_free_space_is_compared_with_the_least_the_output_takes(here):
    free = os.statvfs(here).f_bavail * os.statvfs(here).f_frsize
    check_free_space("out.zarr", free * 5, what="x")  # 10:1 at best: fits
    with pytest.raises(InputError, match=r"out.zarr: writing the stack needs at least .* on "
                                         r"disk \(.* uncompressed, compressed at best 10:1\), "
                                         "but only .* is free there"):
        check_free_space("out.zarr", free * 20, what="the stack")
    with pytest.raises(InputError, match="compressed at best 2:1"):
        check_free_space("out.zarr", free * 5, what="x", compression=2)
