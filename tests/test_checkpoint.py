"""Checkpoints (``unetpipe.nn.checkpoint``) and opening a model (``unetpipe.nn.models``).

Training writes and reads real checkpoints in test_train (what they describe,
the refusal of a pickled object through ``load_checkpoint``); bioimage.io
packages are opened in test_bioimageio. Here: the functions themselves, on
hand-made payloads.
"""

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from unetpipe.core.errors import InputError
from unetpipe.nn.checkpoint import (
    FORMAT,
    VERSION,
    build_model,
    plain,
    read_checkpoint,
    save_checkpoint,
)
from unetpipe.nn.model import UNet
from unetpipe.nn.models import load_checkpoint

UNPICKLED = []


def _record(what):
    UNPICKLED.append(what)


class Tripwire:
    """Records itself when unpickled: a weights-only load must never do that."""

    def __reduce__(self):
        return (_record, ("unpickled",))


def payload(**extra):
    """The least a readable checkpoint holds: format, version and a model entry."""
    model = {"class": "UNet", "config": {"ndim": 2}, "state_dict": {}}
    return {"format": FORMAT, "version": VERSION, "model": model, **extra}


def tiny_unet(seed):
    torch.manual_seed(seed)
    model = UNet(ndim=2, in_channels=1, out_channels=3, depth=1, features=2, norm="batch")
    for m in model.modules():  # not the initial statistics, so they must be loaded too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# --- save and read -------------------------------------------------------------------


def test_save_then_read_round_trips_tensors_and_plain_values(tmp_path):
    weights = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    data = payload(iteration=12, elapsed=3.25, finished=False, best=None, name="run α",
                   history=[{"iteration": 10, "loss": 0.5, "val_ap": float("nan")}],
                   nested={"counts": torch.tensor([1, 2, 3], dtype=torch.int64),
                           "mask": torch.tensor([True, False]), "pooling": [[2, 2], [1, 2]]},
                   weights=weights)
    path = tmp_path / "sub" / "checkpoint.pt"  # the folder is made
    save_checkpoint(data, path)
    assert os.listdir(tmp_path / "sub") == ["checkpoint.pt"]  # no temporary file left
    got = read_checkpoint(path)
    assert set(got) == set(data)
    torch.testing.assert_close(got["weights"], weights, rtol=0, atol=0)
    assert got["nested"]["counts"].dtype == torch.int64
    assert got["nested"]["counts"].tolist() == [1, 2, 3]
    assert got["nested"]["mask"].tolist() == [True, False]
    assert got["nested"]["pooling"] == [[2, 2], [1, 2]]
    assert (got["iteration"], got["elapsed"], got["finished"], got["best"], got["name"]) == (
        12, 3.25, False, None, "run α")
    assert got["history"][0]["loss"] == 0.5 and math.isnan(got["history"][0]["val_ap"])
    assert got["weights"].device.type == "cpu"


def test_save_replaces_a_checkpoint_only_once_the_new_one_is_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(payload(iteration=1), path)
    save_checkpoint(payload(iteration=2), path)
    assert read_checkpoint(path)["iteration"] == 2
    with pytest.raises(Exception):  # noqa: B017 - pickle's error type varies: a lambda cannot be saved
        save_checkpoint(payload(iteration=3, hook=lambda: None), path)
    assert read_checkpoint(path)["iteration"] == 2  # the old one is intact
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


# --- what a checkpoint may hold ---------------------------------------------------------


def test_plain_turns_tuples_and_numpy_scalars_into_python_values():
    value = {"shape": (4, (2, 3)), 7: np.int64(5), "f": np.float32(0.5), "b": np.bool_(True),
             "none": None, "t": torch.ones(2)}
    got = plain(value)
    assert got.keys() == {"shape", "7", "f", "b", "none", "t"}  # keys become strings
    assert got["shape"] == [4, [2, 3]]
    assert type(got["7"]) is int and got["7"] == 5
    assert type(got["f"]) is float and got["f"] == 0.5
    assert got["b"] is True and got["none"] is None
    assert got["t"] is value["t"]  # tensors stay, for torch.save
    assert plain((np.uint8(3),)) == [3]
    assert plain("text") == "text" and plain(float("nan")) != plain(float("nan"))  # nan kept


def test_plain_json_keeps_only_json_values():
    value = {"loss": [1.0, float("inf"), -float("inf"), float("nan")], "state": torch.ones(3),
             "where": Path("/data/a.tif"), "ok": True, "n": np.int32(4), "frac": Fraction(1, 3),
             "mixed": (torch.zeros(1), "kept", None)}
    assert plain(value, json=True) == {
        "loss": [1.0, None, None, None], "where": "/data/a.tif", "ok": True, "n": 4,
        "frac": "1/3", "mixed": ["kept", None]}
    assert plain([float("nan"), 1.5], json=True) == [None, 1.5]


def test_plain_json_turns_non_finite_numpy_floats_into_none():
    assert plain([np.float64("nan"), np.float32("inf")], json=True) == [None, None]


# --- refusals -----------------------------------------------------------------------


def refused(path, match):
    with pytest.raises(InputError, match=match) as info:
        read_checkpoint(path)
    assert info.value.path == os.fspath(path)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def test_a_pickled_object_is_refused_without_being_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(payload(trap=Tripwire()), path)
    refused(path, r"refusing to load: the checkpoint holds objects other than tensors and "
                  r"plain values \(Unsupported global: GLOBAL .*_record\)$")
    assert UNPICKLED == []
    torch.save(payload(value=Fraction(1, 3)), path)
    refused(path, r"refusing to load.*fractions\.Fraction")


def test_missing_unreadable_and_foreign_files_are_refused_naming_the_file(tmp_path):
    refused(tmp_path / "missing.pt", "checkpoint not found$")
    refused(tmp_path, "checkpoint not found$")  # a folder is not a checkpoint file
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", r"not a readable PyTorch checkpoint \(EOFError")
    # torch reads a text file as a legacy pickle and fails on its first byte, which
    # read_checkpoint words as a refused object: the wording is loose, the refusal holds
    (tmp_path / "text.pt").write_text("not a checkpoint")
    refused(tmp_path / "text.pt", r"refusing to load|not a readable PyTorch checkpoint")
    save_checkpoint(payload(weights=torch.ones(1000)), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # a copy that broke off
    refused(tmp_path / "cut.pt", r"not a readable PyTorch checkpoint \(RuntimeError")
    torch.save({"version": VERSION, "model": {}}, tmp_path / "plain-dict.pt")
    refused(tmp_path / "plain-dict.pt", "not a unetpipe checkpoint .*'unetpipe-checkpoint'")
    torch.save({"format": "other-tool", "version": 1}, tmp_path / "other.pt")
    refused(tmp_path / "other.pt", "not a unetpipe checkpoint")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")  # not even a dict
    refused(tmp_path / "tensor.pt", "not a unetpipe checkpoint")


def test_a_newer_layout_is_refused_and_older_ones_are_read(tmp_path):
    torch.save(payload(version=VERSION + 1), tmp_path / "new.pt")
    refused(tmp_path / "new.pt", f"layout version {VERSION + 1} is newer than this unetpipe "
                                 f"understands \\({VERSION}\\); upgrade unetpipe")
    torch.save(payload(version=VERSION), tmp_path / "same.pt")
    assert read_checkpoint(tmp_path / "same.pt")["version"] == VERSION
    unversioned = {k: v for k, v in payload().items() if k != "version"}  # before versions: 0
    torch.save(unversioned, tmp_path / "unversioned.pt")
    assert read_checkpoint(tmp_path / "unversioned.pt") == unversioned


def test_a_checkpoint_without_a_usable_model_entry_is_refused(tmp_path):
    for i, model in enumerate([None, {"class": "UNet"}, {"config": {}, "state_dict": [1]}]):
        data = payload() if model is None else payload(model=model)
        if model is None:
            del data["model"]
        torch.save(data, tmp_path / f"m{i}.pt")
        refused(tmp_path / f"m{i}.pt", "not a usable unetpipe checkpoint: its 'model' entry")


# --- models.load_checkpoint and build_model -------------------------------------------


def test_load_checkpoint_of_a_pt_file_is_read_checkpoint(tmp_path):
    model = tiny_unet(0)
    path = tmp_path / "model.pt"
    save_checkpoint(payload(iteration=3, model={"class": "UNet", "config": model.config,
                                                "state_dict": model.state_dict()}), path)
    a, b = load_checkpoint(path), read_checkpoint(path)
    assert a.keys() == b.keys() and a["iteration"] == b["iteration"] == 3
    assert a["model"]["config"] == b["model"]["config"] == model.config
    assert_same_state(a["model"]["state_dict"], b["model"]["state_dict"])
    with pytest.raises(InputError, match="not found") as info:
        load_checkpoint(tmp_path / "gone.pt")
    assert info.value.path == os.fspath(tmp_path / "gone.pt")


def test_build_model_rebuilds_the_saved_unet(tmp_path):
    model, other = tiny_unet(0), tiny_unet(1)
    path = tmp_path / "model.pt"
    save_checkpoint(payload(model={"class": "UNet", "config": model.config,
                                   "state_dict": model.state_dict()},
                            best={"state_dict": other.state_dict()}), path)
    ckpt = read_checkpoint(path)
    rebuilt = build_model(ckpt)
    assert isinstance(rebuilt, UNet) and not rebuilt.training
    assert rebuilt.config == model.config
    assert_same_state(rebuilt.state_dict(), model.state_dict())
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    best = build_model(ckpt, weights="best")
    assert_same_state(best.state_dict(), other.state_dict())
    assert not torch.equal(best.head.weight, rebuilt.head.weight)


def test_build_model_refuses_an_unknown_class():
    with pytest.raises(ValueError, match="unknown model class 'ResNet'"):
        build_model({"model": {"class": "ResNet", "config": {}, "state_dict": {}}})
