"""The starter model: shipped small, loaded weights-only, described by `unetpipe info
starter`, a real segmenter of nuclei with no training, and the start of fine-tuning
(train.init), whose first iteration is the starter's own loss on the same batch."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from unetpipe import cli
from unetpipe.core.config import validate_config
from unetpipe.core.errors import ConfigError, InputError
from unetpipe.inputs.synth import (
    DOMAINS,
    RANDOM_DOMAIN,
    domain_options,
    random_domain,
    synthetic_nuclei,
)
from unetpipe.io.images import read_labels, write_tiff
from unetpipe.nn.checkpoint import FORMAT, build_model, read_checkpoint
from unetpipe.nn.data import PatchSampler, open_training_sample
from unetpipe.nn.loss import SegmentationLoss
from unetpipe.nn.models import MODELS_DIR, load_checkpoint, resolve_model
from unetpipe.stages.metrics import score
from unetpipe.stages.predict import model_sha256
from unetpipe.stages.preprocess import preprocess_file
from unetpipe.stages.targets import write_targets
from unetpipe.stages.train import train_model

STARTER = MODELS_DIR / "starter_2d.pt"
NO_AUGMENT = {"elastic": False, "flip": False, "rot90": False, "scale": 0.0, "shift": 0.0,
              "gamma": 0.0, "noise": 0.0}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --- what ships ---------------------------------------------------------------------------


def test_the_starter_ships_small_and_loads_weights_only():
    assert resolve_model("starter") == os.fspath(STARTER)
    assert STARTER.stat().st_size <= 5 * 2**20
    raw = torch.load(STARTER, map_location="cpu", weights_only=True)  # no pickled objects
    assert raw["format"] == FORMAT
    state = raw["model"]["state_dict"]
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)  # stored small
    # read back as float32, in the network the config's defaults describe, so that
    # a default config fine-tunes it
    ckpt = load_checkpoint("starter")
    assert all(v.dtype == torch.float32 for v in ckpt["model"]["state_dict"].values()
               if v.is_floating_point())
    defaults = validate_config({})["model"]
    cfg = ckpt["model"]["config"]
    assert (cfg["ndim"], cfg["in_channels"], cfg["out_channels"]) == (2, 1, 3)
    assert {k: cfg[k] for k in ("depth", "features", "padding", "norm")} == {
        k: defaults[k] for k in ("depth", "features", "padding", "norm")}
    model = build_model(ckpt)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name].to(value.dtype))
    # it carries tuned settings and the recipe that made it
    assert ckpt["segment_params"]["params"]["method"] in ("components", "watershed")
    recipe = ckpt["starter"]
    assert recipe["made_by"] == "benchmarks/starter_model.py"
    assert set(recipe["data"]["ranges"]) == set(RANDOM_DOMAIN)


def test_info_starter_describes_the_model_and_its_recipe(capsys):
    assert cli.main(["info", "starter"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(os.fspath(STARTER))
    assert "built-in model 'starter'" in text
    assert "each with its own domain settings (unetpipe.inputs.synth.random_domain)" in text
    assert "segmentation (tuned by `unetpipe tune`)" in text
    assert cli.main(["info", "--json", "starter"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["starter"]["data"]["train_images"] >= 1
    assert info["architecture"]["parameters"] > 1_000_000
    # a name that is neither a file nor a built-in model: one line
    assert cli.main(["-q", "info", "starterx"]) == 1
    assert "not the name of a built-in model (built-in: starter)" in capsys.readouterr().err


# --- the domains it is trained on -----------------------------------------------------


def test_random_domains_are_reproducible_and_span_the_named_domains():
    assert random_domain(5) == random_domain(5)
    assert random_domain(5) != random_domain(6)
    draws = [random_domain(seed) for seed in range(200)]
    for name, (_law, low, high) in RANDOM_DOMAIN.items():
        if name.startswith("radius"):
            continue
        values = [d[name] for d in draws]
        assert low <= min(values) and max(values) <= high, name
        assert max(values) - min(values) > 0.5 * (high - low), name  # the range is used
    radii = [d["radius"] for d in draws]
    assert all(RANDOM_DOMAIN["radius"][1] <= lo < hi <= lo * RANDOM_DOMAIN["radius_spread"][2]
               for lo, hi in radii)
    # every named 2D domain's settings lie inside the ranges
    for domain in DOMAINS:
        options = domain_options(domain)
        if len(options.pop("shape")) != 2:
            continue
        for name, value in options.items():
            if name == "radius":
                assert RANDOM_DOMAIN["radius"][1] <= value[0] <= RANDOM_DOMAIN["radius"][2]
                continue
            _law, low, high = RANDOM_DOMAIN[name]
            assert low <= value <= high, (domain, name, value)
    image, labels = synthetic_nuclei((64, 64), seed=1, **random_domain(1))
    assert image.dtype == np.uint16 and labels.max() > 0


# --- segmenting with it, no training ----------------------------------------------------


def test_apply_starter_segments_unseen_nuclei(tmp_path):
    """Zero-shot on images of a domain it never saw (other seeds than its own data)."""
    folder = tmp_path / "images"
    truths = {}
    for k, domain in enumerate(["demo", "soft-dense"]):
        options = domain_options(domain)
        options.pop("shape")
        image, labels = synthetic_nuclei((192, 192), seed=[99, k], **options)
        write_tiff(folder / f"{domain}.tif", image, axes="yx")
        truths[domain] = labels
    assert cli.main(["-q", "apply", "starter", str(folder), "--out", str(tmp_path / "out")]) == 0
    for domain, truth in truths.items():
        labels = read_labels(tmp_path / "out" / "labels" / f"{domain}.ome.zarr")
        result = score(truth, labels.data.compute())
        assert result.ap(0.5) > 0.8, (domain, result.ap(0.5))
    record = json.loads((tmp_path / "out" / "labels" / ".demo.apply.json").read_text())
    assert record["segment"]["method"] == load_checkpoint("starter")["segment_params"][
        "params"]["method"]  # its own tuned settings


# --- fine-tuning --------------------------------------------------------------------------


def prepared(folder: Path, n: int = 2) -> tuple[list, list]:
    """Stores and three-class targets of synthetic images: (train pairs, val stores)."""
    train, val = [], []
    for k in range(n + 1):
        image, labels = synthetic_nuclei((96, 96), seed=[7, k])
        raw = write_tiff(folder / f"raw{k}.tif", image, axes="yx")
        truth = write_tiff(folder / f"truth{k}.tif", labels, axes="yx")
        store = folder / f"pre{k}.ome.zarr"
        preprocess_file(raw, store, labels_path=truth, progress=False)
        if k < n:
            write_targets(store, folder / f"t{k}.zarr", mode="three_class", progress=False)
            train.append((str(store), str(folder / f"t{k}.zarr")))
        else:
            val.append(str(store))
    return train, val


def first_loss(train, val, out: Path, init) -> float:
    config = validate_config({
        "train": {"init": init, "iterations": 5, "patch": [64, 64], "batch_size": 2,
                  "val_every": 5, "minutes": None, "seed": 11, "deterministic": True},
        "augment": NO_AUGMENT})
    result = train_model(train, val, out, config=config, progress=False, stop_at=1)
    assert result.iterations == 1
    return result.final_loss


def test_train_init_starts_from_the_starters_weights(tmp_path):
    train, val = prepared(tmp_path)
    tuned = first_loss(train, val, tmp_path / "from-starter", "starter")
    # the starter's own loss on the batch the run drew first (the sampler is a
    # function of the seed and the iteration), in training mode as the run computes it
    samples = [open_training_sample(img, tgt) for img, tgt in train]
    x, t, w = PatchSampler(samples, patch_shape=(64, 64), foreground=0.5, seed=11).batch(0, 2)
    model = build_model(load_checkpoint("starter")).train()
    with torch.no_grad():
        expected = SegmentationLoss(dice=0.0)(model(torch.from_numpy(x)),
                                              torch.from_numpy(t).long(), torch.from_numpy(w))
    assert tuned == pytest.approx(float(expected), rel=1e-5)
    # random weights give another loss: the comparison can fail
    scratch = first_loss(train, val, tmp_path / "scratch", None)
    assert abs(scratch - tuned) > 1e-3
    # the checkpoint says where it started
    best = read_checkpoint(tmp_path / "from-starter" / "checkpoint_last.pt")
    assert best["data"]["init"]["model"] == "starter"
    assert best["data"]["init"]["sha256"] == model_sha256(STARTER)


def test_train_init_from_a_checkpoint_file_and_a_package(tmp_path):
    """A path works as well as the name, and so does a bioimage.io package of it."""
    train, val = prepared(tmp_path, n=1)
    by_name = first_loss(train, val, tmp_path / "a", "starter")
    by_path = first_loss(train, val, tmp_path / "b", os.fspath(STARTER))
    assert by_path == by_name
    package = tmp_path / "starter.zip"
    assert cli.main(["-q", "export", "starter", str(package), "--weights",
                     "pytorch_state_dict"]) == 0
    assert first_loss(train, val, tmp_path / "c", os.fspath(package)) == pytest.approx(
        by_name, rel=1e-6)


def test_train_init_with_another_network_is_one_clear_error(tmp_path):
    train, val = prepared(tmp_path, n=1)
    config = validate_config({"model": {"depth": 3, "features": 8},
                              "train": {"init": "starter", "iterations": 2, "patch": [64, 64],
                                        "batch_size": 2}})
    with pytest.raises(ConfigError) as e:
        train_model(train, val, tmp_path / "m", config=config, progress=False)
    message = str(e.value)
    assert message.startswith("config key 'train.init': starter")
    assert "depth 4 in the model, 3 here (from model.depth)" in message
    assert "features 16 in the model, 8 here (from model.features)" in message
    assert "pooling" not in message  # follows from the depth: not a second complaint
    assert not (tmp_path / "m" / "checkpoint_last.pt").exists()
    # two-class targets do not fit the starter's three classes
    write_targets(train[0][0], tmp_path / "two.zarr", mode="two_class", progress=False)
    config = validate_config({"train": {"init": "starter", "iterations": 2, "patch": [64, 64],
                                        "batch_size": 2}})
    with pytest.raises(ConfigError, match=r"out_channels 3 in the model, 2 here \(from "
                                          r"targets.mode"):
        train_model([(train[0][0], str(tmp_path / "two.zarr"))], val, tmp_path / "m2",
                    config=config, progress=False)
    # a model that is not there
    config = validate_config({"train": {"init": str(tmp_path / "none.pt")}})
    with pytest.raises(InputError, match="no such model file"):
        train_model(train, val, tmp_path / "m3", config=config, progress=False)
