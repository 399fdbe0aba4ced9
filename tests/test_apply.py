"""`unetpipe apply`: raw images to labels and tables in one command, equal to the
stages run one by one; bad files skipped in one line; tuned settings used unless
the command line sets them; a second run skips, an interrupted one resumes."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr

from unetpipe import cli
from unetpipe.core.cluster import Execution
from unetpipe.core.config import validate_config
from unetpipe.core.errors import InputError
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import read_labels, write_ome_zarr, write_tiff
from unetpipe.nn.checkpoint import read_checkpoint, save_checkpoint
from unetpipe.nn.models import resolve_model
from unetpipe.stages.instances import SegmentParams
from unetpipe.stages.preprocess import preprocess_file
from unetpipe.stages.segment import segment_store
from unetpipe.stages.targets import write_targets
from unetpipe.stages.train import train_model

PERCENTILES = (2.0, 99.5)  # not the config's default: apply must take the model's


def train_tiny(folder: Path, shape, patch, iterations: int) -> str:
    """A tiny U-Net trained on synthetic nuclei preprocessed with PERCENTILES and
    clipping, so that the checkpoint records that normalisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    axes = "yx" if len(shape) == 2 else "zyx"
    train, val = [], []
    for k, role in enumerate(["train", "train", "val"]):
        image, labels = synthetic_nuclei(shape, seed=k)
        raw = write_tiff(folder / f"raw{k}.tif", image, axes=axes)
        truth = write_tiff(folder / f"truth{k}.tif", labels, axes=axes)
        store = folder / f"pre{k}.ome.zarr"
        preprocess_file(raw, store, labels_path=truth, percentiles=PERCENTILES, clip=True,
                        progress=False)
        if role == "train":
            write_targets(store, folder / f"targets{k}.zarr", progress=False)
            train.append((str(store), str(folder / f"targets{k}.zarr")))
        else:
            val.append(str(store))
    config = validate_config({
        "model": {"depth": 2, "features": 8},
        "train": {"iterations": iterations, "patch": list(patch), "batch_size": 4,
                  "val_every": iterations, "minutes": None, "checkpoint_every": iterations,
                  "warmup": 0, "lr": 0.01},
        "augment": {"elastic": False}})
    train_model(train, val, folder / "model", config=config, progress=False)
    torch.set_num_threads(threads)
    return str(folder / "model" / "checkpoint_best.pt")


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("model2d"), (64, 64), (32, 32), 80)


@pytest.fixture(scope="module")
def model3d(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("model3d"), (16, 48, 48), (16, 32, 32), 40)


@pytest.fixture(scope="module")
def images2d(tmp_path_factory):
    """A folder of raw 2D images: two TIFFs (one calibrated) and an OME-Zarr."""
    folder = tmp_path_factory.mktemp("images2d")
    image, _ = synthetic_nuclei((64, 80), seed=10)
    write_tiff(folder / "a.tif", image, axes="yx")
    image, _ = synthetic_nuclei((72, 64), seed=11)
    write_tiff(folder / "b.tif", image, axes="yx", spacing=(0.5, 0.5))
    image, _ = synthetic_nuclei((64, 64), seed=12)
    write_ome_zarr(folder / "c.ome.zarr", image, axes="yx", spacing=(1.0, 1.0), chunks=(32, 32))
    return folder


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


pytestmark = pytest.mark.usefixtures("one_thread")


def level0(store) -> np.ndarray:
    return zarr.open_array(os.path.join(str(store), "0"), mode="r")[...]


def by_hand(model: str, image: Path, folder: Path, *options: str) -> dict:
    """preprocess (with the model's percentiles), predict and segment, one command
    each, as a user would run them."""
    name = image.name.split(".")[0]
    pre, probs = folder / f"{name}.pre.ome.zarr", folder / f"{name}.probs.ome.zarr"
    labels, table = folder / f"{name}.labels.ome.zarr", folder / f"{name}.csv"
    assert cli.main(["-q", "preprocess", str(image), str(pre), "--percentiles",
                     *map(str, PERCENTILES), "--clip", "true"]) == 0
    assert cli.main(["-q", "predict", model, str(pre), str(probs)]) == 0
    assert cli.main(["-q", "segment", str(probs), str(labels), "--table", str(table),
                     "--image", str(pre), *options]) == 0
    return {"labels": level0(labels), "probabilities": level0(probs),
            "table": pd.read_csv(table)}


def assert_same_as_by_hand(out: Path, name: str, hand: dict, *, tiff: bool = True) -> None:
    labels = level0(out / "labels" / f"{name}.ome.zarr")
    assert labels.max() > 0, "the test model finds no object: the comparison says nothing"
    np.testing.assert_array_equal(labels, hand["labels"])
    np.testing.assert_array_equal(level0(out / "probabilities" / f"{name}.ome.zarr"),
                                  hand["probabilities"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / f"{name}.csv"), hand["table"])
    if tiff:
        np.testing.assert_array_equal(tifffile.imread(out / "labels" / f"{name}.tif"), labels)


def snapshot(folder: Path) -> dict:
    """Every file below a folder: its modification time and digest."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(folder))] = (path.stat().st_mtime_ns,
                                                   hashlib.sha256(path.read_bytes()).hexdigest())
    return found


# --- the outputs are the stages' ---------------------------------------------------------


def test_a_folder_of_2d_images_equals_the_stages_run_by_hand(model2d, images2d, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "apply.log"
    assert cli.main(["--log", str(log), "apply", model2d, str(images2d), "--out", str(out),
                     "--tiff", "--probabilities"]) == 0
    for image in (images2d / "a.tif", images2d / "b.tif", images2d / "c.ome.zarr"):
        name = image.name.split(".")[0]
        hand = by_hand(model2d, image, tmp_path)
        assert_same_as_by_hand(out, name, hand)
        assert len(hand["table"]) == level0(out / "labels" / f"{name}.ome.zarr").max()
    # the model's normalisation, not the config's: preprocessing with the default
    # percentiles gives other probabilities
    assert cli.main(["-q", "preprocess", str(images2d / "a.tif"), str(tmp_path / "d.ome.zarr")]) == 0
    assert cli.main(["-q", "predict", model2d, str(tmp_path / "d.ome.zarr"),
                     str(tmp_path / "d.probs.ome.zarr")]) == 0
    assert not np.array_equal(level0(tmp_path / "d.probs.ome.zarr"),
                              level0(out / "probabilities" / "a.ome.zarr"))
    # the TIFF keeps the physical pixel size; the work folder is gone
    assert read_labels(out / "labels" / "b.tif").spacing == (0.5, 0.5)
    assert not (out / ".work").exists()
    text = log.read_text()
    assert "percentiles [2.0, 99.5], clipped" in text
    for name in "abc":
        assert f"] {name}: settings method 'watershed' (default), threshold 0.6 (default)" in text
    last = text.strip().splitlines()[-1]
    assert "3 of 3 image(s) segmented, 0 skipped (done before), 0 failed" in last


def test_a_3d_stack_equals_the_stages_run_by_hand(model3d, tmp_path):
    image, _ = synthetic_nuclei((16, 48, 48), seed=20)
    raw = write_tiff(tmp_path / "inputs" / "stack.tif", image, axes="zyx",
                     spacing=(1.0, 0.5, 0.5))
    out = tmp_path / "out"
    assert cli.main(["-q", "apply", model3d, str(raw), "--out", str(out), "--tiff",
                     "--probabilities"]) == 0
    assert_same_as_by_hand(out, "stack", by_hand(model3d, raw, tmp_path))
    labels = read_labels(out / "labels" / "stack.ome.zarr")
    assert labels.data.shape == (16, 48, 48) and labels.spacing == (1.0, 0.5, 0.5)
    assert read_labels(out / "labels" / "stack.tif").spacing == (1.0, 0.5, 0.5)


def test_a_folder_of_2d_and_3d_images_each_with_its_model(model2d, model3d, tmp_path, capsys):
    """Each model does the images it fits, names the others in one line, and leaves
    the outputs the other model made in the same output folder alone."""
    folder = tmp_path / "mixed"
    image, _ = synthetic_nuclei((64, 80), seed=30)
    flat = write_tiff(folder / "flat.tif", image, axes="yx")
    image, _ = synthetic_nuclei((16, 48, 48), seed=31)
    stack = write_tiff(folder / "stack.tif", image, axes="zyx", spacing=(1.0, 0.5, 0.5))
    out = tmp_path / "out"
    assert cli.main(["-q", "apply", model2d, str(folder), "--out", str(out), "--tiff",
                     "--probabilities"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "stack.tif: is 3D" in err[0] and "segments 2D images" in err[0]
    assert err[1].endswith("1 of 2 image(s) failed (see the lines above); the other 1 are done")
    assert cli.main(["-q", "apply", model3d, str(folder), "--out", str(out), "--tiff",
                     "--probabilities"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "flat.tif: is 2D" in err[0] and "segments 3D stacks" in err[0]
    assert_same_as_by_hand(out, "flat", by_hand(model2d, flat, tmp_path / "hand2d"))
    assert_same_as_by_hand(out, "stack", by_hand(model3d, stack, tmp_path / "hand3d"))


def test_a_bioimageio_package_gives_the_checkpoints_labels(model2d, images2d, tmp_path):
    from unetpipe.nn.bioimageio import export_model

    package = tmp_path / "model.zip"
    export_model(model2d, package, validate=False, test_shape=(64, 64))
    a = images2d / "a.tif"
    assert cli.main(["-q", "apply", str(package), str(a), "--out", str(tmp_path / "zip")]) == 0
    assert cli.main(["-q", "apply", model2d, str(a), "--out", str(tmp_path / "pt")]) == 0
    labels = level0(tmp_path / "zip" / "labels" / "a.ome.zarr")
    assert labels.max() > 0
    np.testing.assert_array_equal(labels, level0(tmp_path / "pt" / "labels" / "a.ome.zarr"))


# --- bad input -------------------------------------------------------------------------------


def test_a_bad_file_is_named_in_one_line_and_the_others_are_done(model2d, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = synthetic_nuclei((64, 64), seed=30)
    write_tiff(folder / "good.tif", image, axes="yx")
    (folder / "broken.tif").write_bytes(b"this is no TIFF file" * 40)
    stack, _ = synthetic_nuclei((8, 32, 32), seed=31)
    write_tiff(folder / "stack.tif", stack, axes="zyx")  # 3D, for a 2D model
    out = tmp_path / "out"
    assert cli.main(["apply", model2d, str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    broken = [ln for ln in lines if "broken.tif" in ln]
    assert len(broken) == 1 and "not a readable TIFF file" in broken[0], err
    stacked = [ln for ln in lines if "stack.tif" in ln]
    assert len(stacked) == 1 and "is 3D" in stacked[0] and "2D images" in stacked[0], err
    assert lines[-1] == "unetpipe apply: error: 2 of 3 image(s) failed (see the lines above); " \
                        "the other 1 are done"
    assert level0(out / "labels" / "good.ome.zarr").max() > 0
    assert (out / "tables" / "good.csv").is_file()
    assert sorted(p.name for p in (out / "labels").iterdir()) == [".good.apply.json",
                                                                  "good.ome.zarr"]
    assert not (out / ".work").exists()


def test_arguments_that_name_nothing_are_refused_before_any_work(model2d, images2d, tmp_path,
                                                                  capsys):
    def error(*args):
        assert cli.main(["-q", "apply", *map(str, args)]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("unetpipe apply: error: "), lines
        return lines[0]

    assert "not the name of a built-in model (built-in: starter)" in \
        error("starterx", images2d, "--out", tmp_path / "o")
    with pytest.raises(InputError, match="built-in"):
        resolve_model("starterx")
    assert resolve_model(model2d) == model2d
    assert "holds the input" in error(model2d, images2d, "--out", images2d)
    assert "is the input" in error(model2d, images2d / "c.ome.zarr", "--out",
                                   images2d / "c.ome.zarr")
    assert "the pattern matches no image" in error(model2d, images2d / "*.png", "--out",
                                                    tmp_path / "o")
    twins = tmp_path / "twins"
    twins.mkdir()
    image, _ = synthetic_nuclei((32, 32), seed=1)
    write_tiff(twins / "x.tif", image, axes="yx")
    write_ome_zarr(twins / "x.ome.zarr", image, axes="yx", spacing=(1, 1))
    assert "has the sample name 'x' of" in error(model2d, twins, "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --- settings ---------------------------------------------------------------------------------


def test_tuned_settings_are_used_and_the_command_line_wins(model2d, images2d, tmp_path):
    tuned = {"method": "watershed", "threshold": 0.8, "foreground": 0.3, "grow": None,
             "seeds": "classes", "h": 2.0, "min_size": 30.0, "max_size": None,
             "fill_holes": None}
    ckpt = read_checkpoint(model2d)
    ckpt["segment_params"] = {"params": tuned, "score": 0.9, "defaults_score": 0.8,
                              "objective": "mean_ap", "validation": ["x"]}
    model = tmp_path / "tuned.pt"
    save_checkpoint(ckpt, model)
    a = images2d / "a.tif"

    def apply(out, *options):
        log = tmp_path / f"{out}.log"
        assert cli.main(["--log", str(log), "apply", str(model), str(a), "--out",
                         str(tmp_path / out), "--probabilities", *options]) == 0
        return log.read_text(), tmp_path / out

    text, out = apply("tuned")
    assert ("method 'watershed' (tuned), threshold 0.8 (tuned), foreground 0.3 (tuned), grow "
            "None (tuned), seeds 'classes' (tuned), h 2.0 (tuned), min_size 30.0 (tuned)") in text
    assert f"tuned values from {model} (mean_ap 0.9)" in text
    labels = level0(out / "labels" / "a.ome.zarr")
    probs = out / "probabilities" / "a.ome.zarr"
    quiet = Execution(progress=False)
    segment_store(probs, tmp_path / "tuned.ome.zarr", params=SegmentParams(**tuned),
                  execution=quiet)
    np.testing.assert_array_equal(labels, level0(tmp_path / "tuned.ome.zarr"))
    segment_store(probs, tmp_path / "defaults.ome.zarr", execution=quiet)
    assert not np.array_equal(labels, level0(tmp_path / "defaults.ome.zarr"))

    text, out = apply("given", "--threshold", "0.5")
    assert "threshold 0.5 (config), foreground 0.3 (tuned)" in text
    mixed = SegmentParams(**{**tuned, "threshold": 0.5})
    segment_store(probs, tmp_path / "mixed.ome.zarr", params=mixed, execution=quiet)
    np.testing.assert_array_equal(level0(out / "labels" / "a.ome.zarr"),
                                  level0(tmp_path / "mixed.ome.zarr"))
    attrs = zarr.open_group(str(out / "labels" / "a.ome.zarr"), mode="r").attrs["unetpipe"]
    assert attrs["params"]["threshold"] == 0.5 and attrs["params"]["min_size"] == 30.0


# --- a second run, an interrupted run --------------------------------------------------------


def test_a_second_run_skips_and_changes_make_them_again(model2d, images2d, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.tif", "b.tif"):
        (inputs / name).write_bytes((images2d / name).read_bytes())
    out, log = tmp_path / "out", tmp_path / "apply.log"
    args = ["apply", model2d, str(inputs / "a.tif"), str(inputs / "b.tif"), "--out", str(out),
            "--tiff"]
    assert cli.main(["-q", *args]) == 0
    before = snapshot(out)
    assert cli.main(["--log", str(log), *args]) == 0
    assert snapshot(out) == before
    text = log.read_text()
    assert "[1/2] a: done before" in text and "[2/2] b: done before" in text
    assert "settings" not in text  # nothing read, nothing run
    assert "0 of 2 image(s) segmented, 2 skipped (done before), 0 failed" in text
    # other settings: the outputs are made again, with them; --keep-work keeps the work
    assert cli.main(["--log", str(log), *args, "--min-size", "60", "--keep-work"]) == 0
    text = log.read_text()
    assert "made before with other segment; making them again" in text
    attrs = zarr.open_group(str(out / "labels" / "a.ome.zarr"), mode="r").attrs["unetpipe"]
    assert attrs["params"]["min_size"] == 60
    np.testing.assert_array_equal(tifffile.imread(out / "labels" / "a.tif"),
                                  level0(out / "labels" / "a.ome.zarr"))
    assert (out / ".work" / "preprocessed" / "a.ome.zarr").is_dir()
    # a rewritten input (same pixels, a new file): made again
    (inputs / "b.tif").write_bytes((images2d / "b.tif").read_bytes())
    os.utime(inputs / "b.tif", ns=(1, 1))
    assert cli.main(["--log", str(log), *args, "--min-size", "60"]) == 0
    text = log.read_text()
    assert "[1/2] a: done before" in text
    assert "b: " in text and "made before with other input_signature" in text
    assert "1 of 2 image(s) segmented, 1 skipped" in text
    assert not (out / ".work").exists()  # a's kept work too, a being done


def test_an_interrupted_run_resumes_where_it_stopped(model2d, images2d, tmp_path, monkeypatch):
    import unetpipe.stages.predict as predict_mod
    import unetpipe.stages.preprocess as preprocess_mod
    import unetpipe.stages.segment as segment_mod

    args = ["-q", "apply", model2d, str(images2d / "a.tif"), str(images2d / "b.tif"), "--out"]
    assert cli.main([*args, str(tmp_path / "whole")]) == 0
    real = {"preprocess_image": preprocess_mod.preprocess_image,
            "predict_store": predict_mod.predict_store,
            "segment_store": segment_mod.segment_store}
    calls = []

    def counting(module, name, *, stop_at=None):
        def wrapper(*a, **k):
            calls.append(name)
            if stop_at is not None and calls.count(name) == stop_at:
                raise KeyboardInterrupt  # as a kill would, after predicting b
            return real[name](*a, **k)
        monkeypatch.setattr(module, name, wrapper)

    out = tmp_path / "parts"
    counting(segment_mod, "segment_store", stop_at=2)
    assert cli.main([*args, str(out)]) == 130
    assert (out / "labels" / "a.ome.zarr").is_dir() and not (out / "labels" / "b.ome.zarr").exists()
    assert (out / ".work" / "preprocessed" / "b.ome.zarr").is_dir()
    assert (out / ".work" / "probabilities" / "b.ome.zarr").is_dir()
    assert not (out / ".work" / "preprocessed" / "a.ome.zarr").exists()

    calls.clear()
    counting(preprocess_mod, "preprocess_image")
    counting(predict_mod, "predict_store")
    counting(segment_mod, "segment_store")
    assert cli.main([*args, str(out)]) == 0
    assert calls == ["segment_store"]  # a skipped; b's preprocessing and prediction reused
    for name in "ab":
        np.testing.assert_array_equal(level0(out / "labels" / f"{name}.ome.zarr"),
                                      level0(tmp_path / "whole" / "labels" / f"{name}.ome.zarr"))
        pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / f"{name}.csv"),
                                      pd.read_csv(tmp_path / "whole" / "tables" / f"{name}.csv"))
    assert not (out / ".work").exists()
