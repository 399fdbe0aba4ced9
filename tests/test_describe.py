"""``unetpipe info``: what a checkpoint holds, checked against what made it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from unetpipe.core.config import validate_config
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import write_ome_zarr
from unetpipe.nn.checkpoint import FORMAT, VERSION, save_checkpoint
from unetpipe.nn.model import UNet, receptive_field
from unetpipe.nn.models import load_checkpoint
from unetpipe.report.describe import checkpoint_info, format_info
from unetpipe.stages.preprocess import percentile_normalize
from unetpipe.stages.targets import write_targets
from unetpipe.stages.train import train_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "unetpipe", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained for 4 iterations on 0.5 um pixels, validated twice."""
    folder = tmp_path_factory.mktemp("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train, val = [], []
    for k, role in enumerate(["train", "val"]):
        image, labels = synthetic_nuclei((64, 64), seed=7 + k)
        lo, hi = np.percentile(image, [1, 99.8])
        store = write_ome_zarr(folder / f"s{k}.ome.zarr",
                               percentile_normalize(image[None], [lo], [hi]), axes="cyx",
                               spacing=(0.5, 0.5), chunks=(64, 64), labels={"gt": labels})
        if role == "train":
            write_targets(store, folder / f"s{k}.zarr", progress=False)
            train.append((str(store), str(folder / f"s{k}.zarr")))
        else:
            val.append(str(store))
    config = validate_config({
        "model": {"depth": 2, "features": 4},
        "train": {"iterations": 4, "patch": [32, 32], "batch_size": 2, "val_every": 2,
                  "minutes": None, "checkpoint_every": 2, "warmup": 0, "seed": 3},
        "augment": {"elastic": False}})
    train_model(train, val, folder / "model", config=config, progress=False)
    torch.set_num_threads(threads)
    return folder / "model"


def test_info_of_a_trained_checkpoint_matches_the_run(trained):
    ckpt = load_checkpoint(trained / "checkpoint_last.pt")
    info = checkpoint_info(ckpt, path="x.pt")
    arch = info["architecture"]
    model = UNet(**ckpt["model"]["config"])
    assert arch["parameters"] == sum(p.numel() for p in model.parameters())
    assert arch["receptive_field"] == list(receptive_field(ndim=2, depth=2))
    assert arch["receptive_field_physical"] == [f * 0.5 for f in arch["receptive_field"]]
    assert arch["pooling_factor"] == [4, 4]
    assert (arch["depth"], arch["features"], arch["in_channels"]) == (2, 4, 1)
    assert info["training_data"]["train"] == ["s0"] and info["training_data"]["val"] == ["s1"]
    assert info["training_data"]["spacing"] == [0.5, 0.5]
    assert info["training"]["iteration"] == 4 and info["training"]["seed"] == 3
    history = ckpt["history"]
    assert info["training"]["final_loss"] == history[-1]["loss"]
    # the best validation among the two validations the run made
    scored = [row for row in history if row.get("val_ap") is not None]
    assert len(scored) == 2
    # kept by the mean AP of the segmentation (ties: AP at 0.5, then the matched IoU)
    top = max(scored, key=lambda r: (r["val_mean_ap"], r["val_ap"], r["val_iou"]))
    assert info["metrics"]["best"]["iteration"] == top["iteration"]
    assert info["metrics"]["best"]["mean_ap"] == pytest.approx(top["val_mean_ap"], abs=1e-6)
    assert info["metrics"]["best"]["ap"] == pytest.approx(top["val_ap"], abs=1e-6)
    text = format_info(info)
    assert f"parameters      {arch['parameters']:,}" in text
    assert "train           1 image(s): s0" in text
    assert "spacing         [0.5, 0.5]" in text
    assert f"best: AP@0.5 {info['metrics']['best']['ap']:.3f}" in text


def test_info_command_prints_text_and_json(trained):
    proc = run("info", trained / "checkpoint_best.pt")
    assert proc.returncode == 0, proc.stderr
    classes = load_checkpoint(trained / "checkpoint_best.pt")["targets"]["classes"]
    assert f"classes         {', '.join(classes)} (" in proc.stdout
    assert "receptive field 44 x 44 pixels (yx) = 22.0 x 22.0" in proc.stdout
    proc = run("info", trained / "checkpoint_best.pt", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    best = load_checkpoint(trained / "checkpoint_best.pt")
    assert info["metrics"]["val_ap"] == best["val_ap"]
    assert info["targets"]["classes"] == best["targets"]["classes"]


def test_info_of_an_anisotropic_3d_checkpoint(tmp_path):
    pooling = [[1, 2, 2], [2, 2, 2]]
    model = UNet(ndim=3, depth=2, features=2, pooling=pooling)
    path = tmp_path / "3d.pt"
    save_checkpoint({"format": FORMAT, "version": VERSION, "iteration": 0,
                     "model": {"class": "UNet", "config": model.config,
                               "state_dict": model.state_dict()},
                     "data": {"ndim": 3, "spacing": [2.0, 0.5, 0.5], "unit": "micrometer"},
                     "targets": {"mode": "two_class", "classes": ["background", "cell"]}}, path)
    info = checkpoint_info(load_checkpoint(path))
    field = list(receptive_field(ndim=3, depth=2, pooling=pooling))
    assert info["architecture"]["receptive_field"] == field == [26, 44, 44]
    assert info["architecture"]["receptive_field_physical"] == [52.0, 22.0, 22.0]
    assert info["architecture"]["pooling_factor"] == [2, 4, 4]
    text = format_info(info)
    assert "receptive field 26 x 44 x 44 pixels (zyx) = 52.0 x 22.0 x 22.0 micrometer" in text
    assert "none (trained without validation images)" in text


def test_info_of_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    proc = run("info", bad)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
