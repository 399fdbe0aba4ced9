"""Training: the loss goes down, checkpoints describe themselves and load safely,
and a killed run resumes to the same weights as an uninterrupted one."""

import csv
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from unetpipe.core.config import validate_config
from unetpipe.core.device import select_device
from unetpipe.core.errors import InputError
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import write_ome_zarr
from unetpipe.nn.checkpoint import build_model
from unetpipe.nn.models import load_checkpoint
from unetpipe.stages.targets import write_targets
from unetpipe.stages.train import LRSchedule, train_model

TINY = {
    "model": {"depth": 2, "features": 4},
    "train": {"iterations": 40, "patch": [32, 32], "batch_size": 4, "val_every": 20,
              "minutes": None, "checkpoint_every": 10, "warmup": 0, "lr": 0.01},
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two training images and one validation image, preprocessed, with targets."""
    folder = tmp_path_factory.mktemp("stores")
    train, val = [], []
    for k, role in enumerate(["train", "train", "val"]):
        image, labels = synthetic_nuclei((64, 64), seed=k)
        lo, hi = np.percentile(image, [1, 99.8])
        norm = ((image - lo) / (hi - lo)).astype(np.float32)[None]
        store = write_ome_zarr(folder / f"{role}{k}.ome.zarr", norm, axes="cyx", spacing=(1, 1),
                               unit=None, chunks=(32, 32), labels={"gt": labels})
        if role == "train":
            targets = folder / f"{role}{k}.zarr"
            write_targets(store, targets, progress=False)
            train.append((str(store), str(targets)))
        else:
            val.append(str(store))
    return train, val


def config(**sections):
    cfg = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return validate_config(cfg)


def history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_training_lowers_the_loss_and_writes_its_outputs(stores, tmp_path):
    train, val = stores
    result = train_model(train, val, tmp_path, config=config(augment={"elastic": False}),
                         progress=False)
    assert result.iterations == 40 and result.start_iteration == 0
    assert result.stopped_by == "iterations" and result.device == "cpu"
    rows = history(tmp_path / "history.csv")
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 4  # one row per 10 iterations
    assert losses[-1] < 0.8 * losses[0]
    val_rows = [r for r in rows if r["val_ap"]]
    assert [int(r["iteration"]) for r in val_rows] == [20, 40]
    for r in val_rows:
        ap = float(r["val_ap"])
        tp, fp, fn = int(r["val_tp"]), int(r["val_fp"]), int(r["val_fn"])
        assert ap == pytest.approx(tp / max(tp + fp + fn, 1), abs=1e-6)
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
    best = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert best["val_ap"] == pytest.approx(max(float(r["val_ap"]) for r in val_rows), abs=1e-6)
    assert best["iteration"] in (20, 40) and best["iteration"] == result.best_iteration


def test_checkpoints_describe_themselves(stores, tmp_path):
    train, val = stores
    train_model(train, val, tmp_path, config=config(train={"iterations": 10}), progress=False)
    last = load_checkpoint(tmp_path / "checkpoint_last.pt")
    best = load_checkpoint(tmp_path / "checkpoint_best.pt")
    for ckpt in (last, best):
        assert ckpt["format"] == "unetpipe-checkpoint" and ckpt["version"] == 1
        assert ckpt["model"]["class"] == "UNet"
        assert ckpt["model"]["config"] == {
            "ndim": 2, "in_channels": 1, "out_channels": 2, "depth": 2, "features": 4,
            "padding": "same", "norm": "batch", "dropout": 0.0, "pooling": [[2, 2], [2, 2]]}
        assert ckpt["targets"]["mode"] == "two_class" and ckpt["targets"]["w0"] == 10.0
        assert ckpt["normalization"] == {"percentiles": None, "clip": None}
        assert ckpt["data"]["train"] == ["train0", "train1"] and ckpt["data"]["val"] == ["val2"]
        assert ckpt["config"]["train"]["iterations"] == 10
        assert ckpt["config"]["augment"]["elastic_sigma"] == 10.0
    assert last["iteration"] == 10 and last["finished"] is True
    assert {"optimizer", "scheduler", "rng", "history", "best"} <= set(last)
    assert isinstance(last["rng"]["torch"], torch.Tensor)
    # the best weights can predict on their own
    model = build_model(best)
    x = torch.rand(1, 1, 32, 32)
    reference = build_model(last, weights="best")
    torch.testing.assert_close(model(x), reference(x))


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "unetpipe-checkpoint", "version": 1, "payload": io.StringIO("x")},
               path)
    with pytest.raises(InputError, match=r"refusing to load.*StringIO"):
        load_checkpoint(path)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a unetpipe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_validation_split_from_training_images(stores, tmp_path):
    train, _ = stores
    # 0.9 of two images rounds to two: one must stay for training
    train_model(train, [], tmp_path, config=config(train={"iterations": 4, "val_fraction": 0.9}),
                progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert len(ckpt["data"]["train"]) == 1 and len(ckpt["data"]["val"]) == 1
    assert set(ckpt["data"]["train"] + ckpt["data"]["val"]) == {"train0", "train1"}


def test_changed_settings_start_afresh(stores, tmp_path, caplog):
    train, val = stores
    cfg = config(train={"iterations": 10})
    train_model(train, val, tmp_path, config=cfg, progress=False, stop_at=5)
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["iteration"] == 5
    # same settings: resumes at 5
    assert train_model(train, val, tmp_path, config=cfg, progress=False).start_iteration == 5
    # a finished run is not resumed, nor is one with another learning rate
    assert train_model(train, val, tmp_path, config=cfg, progress=False,
                       stop_at=5).start_iteration == 0
    other = config(train={"iterations": 10, "lr": 0.005})
    with caplog.at_level("INFO", logger="unetpipe"):
        assert train_model(train, val, tmp_path, config=other,
                           progress=False).start_iteration == 0
    assert "starting afresh" in caplog.text


def test_deterministic_runs_repeat_with_a_time_budget(stores, tmp_path):
    # the time budget must not leak into the learning rate of a deterministic run
    train, val = stores
    cfg = config(train={"iterations": 8, "minutes": 60.0, "deterministic": True},
                 model={"dropout": 0.3})
    a = train_model(train, val, tmp_path / "a", config=cfg, progress=False)
    b = train_model(train, val, tmp_path / "b", config=cfg, progress=False)
    assert a.stopped_by == b.stopped_by == "iterations"
    wa = load_checkpoint(tmp_path / "a/checkpoint_last.pt")["model"]["state_dict"]
    wb = load_checkpoint(tmp_path / "b/checkpoint_last.pt")["model"]["state_dict"]
    for name, value in wa.items():
        assert torch.equal(wb[name], value), name
    assert not torch.are_deterministic_algorithms_enabled()  # switched back afterwards


def test_resumed_history_equals_an_uninterrupted_one(stores, tmp_path):
    train, val = stores
    cfg = config(train={"iterations": 20, "checkpoint_every": 7, "deterministic": True})
    train_model(train, val, tmp_path / "whole", config=cfg, progress=False)
    train_model(train, val, tmp_path / "parts", config=cfg, progress=False, stop_at=13)
    assert train_model(train, val, tmp_path / "parts", config=cfg,
                       progress=False).start_iteration == 13
    whole, parts = history(tmp_path / "whole/history.csv"), history(tmp_path / "parts/history.csv")
    assert [r["iteration"] for r in parts] == [r["iteration"] for r in whole]
    for r, q in zip(parts, whole, strict=True):
        assert float(r["loss"]) == pytest.approx(float(q["loss"]), abs=1e-6)
        assert r["val_ap"] == q["val_ap"]


def test_a_moved_project_still_resumes(stores, tmp_path):
    import shutil

    train, val = stores
    cfg = config(train={"iterations": 10})
    train_model(train, val, tmp_path / "model", config=cfg, progress=False, stop_at=5)
    folder = os.path.dirname(train[0][0])
    moved = shutil.copytree(folder, tmp_path / "moved")
    train2 = [(str(moved / os.path.basename(a)), str(moved / os.path.basename(b)))
              for a, b in train]
    val2 = [str(moved / os.path.basename(v)) for v in val]
    assert train_model(train2, val2, tmp_path / "model", config=cfg,
                       progress=False).start_iteration == 5


def test_lr_schedule():
    s = LRSchedule(lr=1.0, kind="cosine", warmup=4)
    assert s(0, 0.0) == pytest.approx(0.25)
    assert s(10, 0.0) == pytest.approx(1.0)
    assert s(10, 0.5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s(10, 1.0) == pytest.approx(0.01)
    step = LRSchedule(lr=1.0, kind="step")
    assert [step(0, p) for p in (0.5, 0.7, 0.9)] == pytest.approx([1.0, 0.1, 0.01])


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and getattr(torch.backends, "mps", None) \
            and torch.backends.mps.is_available():
        expected = "mps"
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        from unetpipe.core.errors import ConfigError

        with pytest.raises(ConfigError, match=r"train\.device"):
            select_device("cuda")


def _train_command(out, stores, iterations, *, log=None):
    train, val = stores
    logging = ["--log", str(log)] if log else []
    return [sys.executable, "-m", "unetpipe", "-q", *logging, "train", str(out),
            "--train-images", *[a for a, _ in train], "--train-targets", *[b for _, b in train],
            "--val-images", *val, "--depth", "2", "--features", "8", "--dropout", "0.2",
            "--patch", "48", "48", "--iterations", str(iterations), "--val-every", "50",
            "--checkpoint-every", "5", "--minutes", "null", "--deterministic", "true",
            "--threads", "1"]


@pytest.mark.slow
def test_sigkill_and_resume_equals_an_uninterrupted_run(stores, tmp_path):
    iterations = 150
    whole = tmp_path / "whole"
    subprocess.run(_train_command(whole, stores, iterations), check=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(killed, stores, iterations))
    last = killed / "checkpoint_last.pt"
    seen = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists():
            try:
                seen = load_checkpoint(last)["iteration"]
            except InputError:  # read while being replaced: try again
                seen = 0
            if seen >= 20:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(last)
    assert 20 <= at_kill["iteration"] < iterations and not at_kill["finished"]
    assert not (killed / "training_curves.png").exists()

    resumed = subprocess.run(_train_command(killed, stores, iterations,
                                            log=tmp_path / "resume.log"), check=True, timeout=600)
    assert resumed.returncode == 0
    text = (tmp_path / "resume.log").read_text()
    assert f"resuming from {last} at iteration {at_kill['iteration']}" in text

    a = load_checkpoint(whole / "checkpoint_last.pt")
    b = load_checkpoint(last)
    assert a["iteration"] == b["iteration"] == iterations and b["finished"]
    for name, value in a["model"]["state_dict"].items():
        torch.testing.assert_close(b["model"]["state_dict"][name], value, atol=1e-5, rtol=0,
                                   msg=name)
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert float(state_b[k]["step"]) == iterations
        torch.testing.assert_close(state_b[k]["exp_avg_sq"], state_a[k]["exp_avg_sq"],
                                   atol=1e-6, rtol=1e-4)
    assert [r["iteration"] for r in b["history"]] == [r["iteration"] for r in a["history"]]
    assert history(killed / "history.csv")[-1]["val_ap"] == history(whole / "history.csv")[-1][
        "val_ap"]
