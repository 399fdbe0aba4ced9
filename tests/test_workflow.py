"""The Snakemake workflow, run for real on a tiny demo in a temporary folder."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from tiny_workflow import TINY as TINY_BASE
from tiny_workflow import job_table, snakemake

from unetpipe.io import ngff
from unetpipe.io.images import ngff_metadata, read_image, read_labels, write_tiff
from unetpipe.nn.checkpoint import build_model
from unetpipe.nn.models import load_checkpoint
from unetpipe.nn.tiles import predict_array
from unetpipe.stages.instances import resolve_params, segment_array
from unetpipe.stages.metrics import score
from unetpipe.stages.weights import separation_weight_map, targets_for_mode

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow

TINY = {
    **TINY_BASE,
    # six iterations leave every class near 1/3: seeds from a lower threshold
    "segment": {"threshold": 0.35},
}


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_dry_run_plans_demo_preprocess_targets_training_and_prediction(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2", config=TINY)
    assert proc.returncode == 0, proc.stderr
    # targets for the two training images only; one training job; one image to predict
    assert job_table(proc.stdout) == {"demo_data": 1, "preprocess": 4, "targets": 2, "train": 1,
                                      "tune": 1, "predict": 1, "segment": 1, "evaluate": 1,
                                      "summarize": 1, "report_overlay": 1,
                                      "report_weightmap": 1, "report_metrics": 1,
                                      "report_tune": 1, "report_config": 1,
                                      "report_runtimes": 1, "all": 1, "total": 20}


def test_dry_run_plans_tune_between_train_and_segment(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", config=TINY)
    assert proc.returncode == 0, proc.stderr
    order = re.findall(r"^rule (\w+):", proc.stdout, re.M)
    assert order.index("train") < order.index("tune") < order.index("predict") \
        < order.index("segment")
    # tune calibrates on the validation image; prediction uses the tuned checkpoint
    assert re.search(r"unetpipe .*tune results/model/checkpoint_best.pt "
                     r"results/model/checkpoint_tuned.pt --params "
                     r"results/model/segment_params.yaml --val-images "
                     r"results/preprocessed/val_000.ome.zarr", proc.stdout)
    assert re.search(r"unetpipe .*predict results/model/checkpoint_tuned.pt ", proc.stdout)
    # without tuning, the trained checkpoint, and no tune job
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--config", "tune={enabled: false}",
                     config=TINY)
    assert proc.returncode == 0, proc.stderr
    assert "tune" not in job_table(proc.stdout)
    assert re.search(r"unetpipe .*predict results/model/checkpoint_best.pt ", proc.stdout)
    # without validation images, tune gets the training images (it takes the held-out ones)
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--config",
                     "data={val: {images: null, labels: null}}", config=TINY)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"tune results/model/checkpoint_best.pt .* --train-images "
                     r"results/preprocessed/train_000.ome.zarr "
                     r"results/preprocessed/train_001.ome.zarr", proc.stdout)


def test_a_given_checkpoint_predicts_without_training(tmp_path):
    (tmp_path / "mine.pt").write_bytes(b"")  # a dry run does not read it
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--config", "predict={checkpoint: mine.pt}",
                     config=TINY)
    assert proc.returncode == 0, proc.stderr
    assert job_table(proc.stdout) == {"demo_data": 1, "preprocess": 4, "predict": 1,
                                      "segment": 1, "evaluate": 1, "summarize": 1,
                                      "report_overlay": 1, "report_metrics": 1,
                                      "report_config": 1, "report_runtimes": 1, "all": 1,
                                      "total": 14}
    assert "mine.pt" in proc.stdout
    # no ground truth: segmented, not evaluated
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--config",
                     "predict={checkpoint: mine.pt}",
                     "data={predict: {images: 'resources/demo/predict/images/*.tif', "
                     "labels: null}}", config=TINY)
    assert proc.returncode == 0, proc.stderr
    assert job_table(proc.stdout) == {"demo_data": 1, "preprocess": 4, "predict": 1,
                                      "segment": 1, "report_overlay": 1, "report_config": 1,
                                      "report_runtimes": 1, "all": 1, "total": 11}


def test_the_starter_segments_without_training_as_apply_does(tmp_path):
    """predict.checkpoint: starter: no training, the starter's tuned settings, and
    the labels `unetpipe apply starter` gives for the same image."""
    config = {**TINY_BASE, "predict": {"checkpoint": "starter"}}
    proc = snakemake(tmp_path, "--cores", "2", config=config)
    assert proc.returncode == 0, proc.stderr
    table = job_table(proc.stderr)
    assert "train" not in table and "tune" not in table and table["predict"] == 1
    res = tmp_path / "results"
    assert not (res / "model").exists()
    labels = read_labels(res / "labels/predict_000.ome.zarr").data.compute()
    raw = tmp_path / "resources/demo/predict/images/predict_000.tif"
    out = tmp_path / "applied"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep
           + os.environ.get("PATH", "")}
    done = subprocess.run(["unetpipe", "-q", "apply", "starter", str(raw), "--out", str(out)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    applied = read_labels(out / "labels/predict_000.ome.zarr").data.compute()
    assert labels.max() > 10
    np.testing.assert_array_equal(labels, applied)
    # and they are good: the demo's truth, scored as the workflow scored it
    scores = json.loads((res / "metrics/predict_000.json").read_text())["scores"]
    at_half = scores["per_threshold"][0]
    assert at_half["iou_threshold"] == 0.5 and at_half["ap"] > 0.9, at_half


@pytest.mark.slow
def test_real_run_then_nothing_to_do(tmp_path):
    proc = snakemake(tmp_path, "--cores", "2", config=TINY)
    assert proc.returncode == 0, proc.stderr
    res = tmp_path / "results"
    stores = sorted(p.name for p in (res / "preprocessed").iterdir())
    assert stores == ["predict_000.ome.zarr", "train_000.ome.zarr", "train_001.ome.zarr",
                      "val_000.ome.zarr"]
    image = read_image(res / "preprocessed/predict_000.ome.zarr")
    assert image.axes == "cyx" and image.data.shape == (1, 160, 128)
    assert image.data.chunks[1:] == ((64, 64, 32), (64, 64))
    raw = read_image(tmp_path / "resources/demo/predict/images/predict_000.tif").data.compute()
    meta = zarr.open_group(str(res / "preprocessed/predict_000.ome.zarr"), mode="r").attrs
    lo, hi = meta["unetpipe"]["low"][0], meta["unetpipe"]["high"][0]
    np.testing.assert_allclose(image.data.compute()[0], (raw - lo) / (hi - lo), rtol=1e-5,
                               atol=1e-6)
    gt = read_labels(res / "preprocessed/train_000.ome.zarr/labels/gt").data.compute()
    src = read_labels(tmp_path / "resources/demo/train/labels/train_000.tif").data.compute()
    np.testing.assert_array_equal(gt, src)
    targets = sorted(p.name for p in (res / "targets").iterdir())
    assert targets == ["train_000.zarr", "train_001.zarr"]
    root = zarr.open_group(str(res / "targets/train_001.zarr"), mode="r")
    labels = read_labels(tmp_path / "resources/demo/train/labels/train_001.tif").data.compute()
    # the default mode: background, interior, boundary
    assert root.attrs["unetpipe"]["mode"] == "three_class"
    np.testing.assert_array_equal(np.asarray(root["targets"]),
                                  targets_for_mode(labels, "three_class"))
    expected = separation_weight_map(labels, mode="three_class")
    np.testing.assert_allclose(np.asarray(root["weights"]), expected, atol=1e-2)
    assert_stores_validate(res, "0.4")  # the default NGFF version
    for rule, name in [("preprocess", "train_000"), ("preprocess", "predict_000"),
                       ("targets", "train_001")]:
        assert (res / "logs" / rule / f"{name}.log").read_text().count(f"{rule}:") >= 1
        assert (res / "benchmarks" / rule / f"{name}.tsv").read_text().startswith("s\t")
    assert not [p for p in (res / "preprocessed").iterdir() if p.name.startswith(".")]
    # training: 6 iterations, validated at 3 and 6 on val_000
    model = res / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "checkpoint_best.pt", "checkpoint_last.pt", "checkpoint_tuned.pt", "history.csv",
        "segment_params.yaml", "training_curves.png"]
    tuned = yaml.safe_load((model / "segment_params.yaml").read_text())
    assert load_checkpoint(model / "checkpoint_tuned.pt")["segment_params"] == tuned
    assert tuned["validation"] == ["val_000"] and tuned["score"] >= tuned["defaults_score"]
    last = load_checkpoint(model / "checkpoint_last.pt")
    assert last["iteration"] == 6 and last["finished"]
    assert last["data"]["train"] == ["train_000", "train_001"] and last["data"]["val"] == ["val_000"]
    assert last["model"]["config"]["features"] == 4
    rows = (model / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "6"]
    assert "validation AP@0.5" in (res / "logs/train.log").read_text()
    assert (res / "benchmarks/train.tsv").read_text().startswith("s\t")
    # prediction: the probabilities of the trained model, block by block
    probs = read_image(res / "probabilities/predict_000.ome.zarr")
    assert probs.axes == "cyx" and probs.data.shape == (3, 160, 128)
    best = load_checkpoint(model / "checkpoint_best.pt")
    expected = predict_array(build_model(best), image.data.compute())
    assert np.abs(probs.data.compute() - expected).max() <= 1e-4
    assert "computed" in (res / "logs/predict/predict_000.log").read_text()
    assert (res / "benchmarks/predict/predict_000.tsv").read_text().startswith("s\t")
    assert not [p for p in (res / "probabilities").iterdir() if p.name.startswith(".")]
    # segmentation: the default method on those probabilities, a row per object
    labels = read_labels(res / "labels/predict_000.ome.zarr")
    assert labels.axes == "yx" and labels.data.dtype == np.uint32
    segmented = labels.data.compute()
    # one block (the image is smaller than the default block): the same as
    # the whole image at once, watershed included
    # the config's threshold, the tuned values for the rest
    params, sources = resolve_params({"threshold": 0.35}, tuned["params"])
    assert sources["threshold"] == "config" and sources["foreground"] == "tuned"
    whole = segment_array(probs.data.compute(), params=params)
    assert "threshold 0.35 (config)" in (res / "logs/segment/predict_000.log").read_text()
    np.testing.assert_array_equal(segmented == 0, whole == 0)
    assert segmented.max() == whole.max() == np.unique(segmented[segmented > 0]).size
    table = pd.read_csv(res / "tables/predict_000.csv")
    assert list(table["label"]) == list(range(1, segmented.max() + 1))
    assert segmented.max() > 0
    np.testing.assert_allclose(table["area"].to_numpy(float), np.bincount(segmented.ravel())[1:])
    # every long step's log ends with one summary line: throughput and time
    summary = re.compile(r"INFO unetpipe: (\w+): .*; [\d.]+ (?:[kMG]?voxels|it)/s in "
                         r"[\d.]+ (?:s|min)")
    for log in ["preprocess/train_000", "targets/train_001", "train", "predict/predict_000",
                "segment/predict_000", "evaluate/predict_000"]:
        last = (res / "logs" / f"{log}.log").read_text().strip().splitlines()[-1]
        assert summary.search(last) and summary.search(last)[1] == log.split("/")[0], last
        if log.startswith("segment"):
            assert f" {segmented.max()} objects " in last
    # evaluation against the demo's ground truth
    truth = read_labels(res / "preprocessed/predict_000.ome.zarr/labels/gt").data.compute()
    saved = json.loads((res / "metrics/predict_000.json").read_text())
    assert saved["sample"] == "predict_000"
    assert saved["scores"]["mean_ap"] == pytest.approx(score(truth, segmented).mean_ap)
    summary = pd.read_csv(res / "metrics/summary.csv")
    assert list(summary["sample"]) == ["predict_000", "pooled"]

    again = snakemake(tmp_path, "--cores", "2")
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr

    # curated data exported from napari join the training set: Snakemake plans
    # their preprocessing and targets, and training again
    curated = tmp_path / "resources/curated/fix1"
    curated.mkdir(parents=True)
    shutil.copy(tmp_path / "resources/demo/train/images/train_000.tif", curated / "image.tif")
    shutil.copy(tmp_path / "resources/demo/train/labels/train_000.tif", curated / "labels.tif")
    plan = snakemake(tmp_path, "-n", "--cores", "2")
    assert plan.returncode == 0, plan.stderr
    assert job_table(plan.stdout) == {"preprocess": 1, "targets": 1, "train": 1, "tune": 1,
                                      "predict": 1, "segment": 1, "evaluate": 1,
                                      "summarize": 1, "report_overlay": 1, "report_metrics": 1,
                                      "report_tune": 1, "report_runtimes": 1, "all": 1,
                                      "total": 13}
    assert "results/targets/curated-fix1.zarr" in plan.stdout


def test_config_error_stops_before_any_work(tmp_path):
    proc = snakemake(tmp_path, "--cores", "1",
                     config={**TINY, "preprocess": {"percentiles": [99.8, 1]}})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "unetpipe: config key 'preprocess.percentiles': the low percentile (99.8) must be "
        "below the high one (1)")
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # the README's examples, word for word
        ("preprocess={percentiles: [99.8, 1]}",
         "unetpipe: config key 'preprocess.percentiles': the low percentile (99.8) must be "
         "below the high one (1)"),
        ("data={spacng: [1, 1]}",
         "unetpipe: config key 'data.spacng' is not known (did you mean 'data.spacing'?)"),
        ("demo={n_train: many}", "unetpipe: config key 'demo.n_train': 'many' is not of type integer"),
    ],
)
def test_config_option_errors_name_the_key(tmp_path, override, message):
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--config", override, config=TINY)
    assert proc.returncode == 1
    assert proc.stderr.strip() == message


def test_config_option_values_reach_the_rules_typed(tmp_path):
    # Snakemake passes nested --config values as strings; they must work as numbers
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--config",
                     "preprocess={percentiles: [2, 99.5], pyramid_levels: 0, clip: true}",
                     config=TINY)
    assert proc.returncode == 0, proc.stderr
    assert "--percentiles 2.0 99.5" in proc.stdout
    assert "--clip true" in proc.stdout and "--pyramid-levels 0" in proc.stdout


@pytest.mark.slow
def test_3d_demo_config_runs_with_anisotropic_spacing(tmp_path):
    small = ("demo={n_train: 1, n_val: 1, n_predict: 1, train_shape: [8, 48, 48], "
             "predict_shape: [12, 64, 96]}")
    tiny_model = "model={depth: 2, features: 2}"
    tiny_train = "train={iterations: 2, val_every: 2, patch: [8, 32, 32], batch_size: 1}"
    shutil.copy(ROOT / "workflow/configs/demo-3d.yaml", tmp_path / "demo-3d.yaml")
    proc = snakemake(tmp_path, "--cores", "2", "--config", small, tiny_model, tiny_train,
                     "segment={threshold: 0.35}", "io={ngff_version: '0.5'}",
                     config=yaml.safe_load((tmp_path / "demo-3d.yaml").read_text()))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results-3d/preprocessed"
    assert sorted(p.name for p in out.iterdir()) == [
        "predict_000.ome.zarr", "train_000.ome.zarr", "val_000.ome.zarr"]
    assert (tmp_path / "results-3d/targets/train_000.zarr/weights").is_dir()
    image = read_image(out / "predict_000.ome.zarr")
    # the spacing comes from the demo TIFFs' metadata (data.spacing is null)
    assert image.axes == "czyx" and image.data.shape == (1, 12, 64, 96)
    assert image.spacing == (1.0, 0.5, 0.5) and image.unit == "micrometer"
    gt = read_labels(out / "train_000.ome.zarr/labels/gt")
    assert gt.data.shape == (8, 48, 48) and int(gt.data.max().compute()) > 3
    # z (1.0 um) is twice as coarse as y, x (0.5 um): the first level pools y, x only
    ckpt = load_checkpoint(tmp_path / "results-3d/model/checkpoint_best.pt")
    assert ckpt["model"]["config"]["pooling"] == [[1, 2, 2], [2, 2, 2]]
    assert ckpt["data"]["spacing"] == [1.0, 0.5, 0.5]
    probs = read_image(tmp_path / "results-3d/probabilities/predict_000.ome.zarr")
    assert probs.axes == "czyx" and probs.data.shape == (3, 12, 64, 96)
    assert probs.spacing == (1.0, 0.5, 0.5)
    labels = read_labels(tmp_path / "results-3d/labels/predict_000.ome.zarr")
    assert labels.axes == "zyx" and labels.data.shape == (12, 64, 96)
    assert labels.spacing == (1.0, 0.5, 0.5) and labels.unit == "micrometer"
    table = pd.read_csv(tmp_path / "results-3d/tables/predict_000.csv")
    assert len(table) == int(labels.data.max().compute()) > 0
    assert "volume" in table and "solidity" not in table
    assert (tmp_path / "results-3d/metrics/summary.csv").exists()
    assert_stores_validate(tmp_path / "results-3d", "0.5")


def assert_stores_validate(results, version):
    """Every OME-Zarr store of a results folder, and every image-label in one, is valid
    NGFF of ``version`` for ome-zarr-models; labels name their image, probabilities
    their classes."""
    stores = sorted(results.glob("*/*.ome.zarr"))
    assert {p.parent.name for p in stores} == {"preprocessed", "probabilities", "labels"}
    for store in stores:
        found = ngff.validate(store)
        assert type(found).__module__.startswith(f"ome_zarr_models.v0{version[-1]}"), store
        meta = ngff_metadata(zarr.open_group(str(store), mode="r").attrs)
        stage = store.parent.name
        assert type(found).__name__ == ("ImageLabel" if stage == "labels" else "Image"), store
        if stage == "labels":
            assert meta["image-label"]["source"] == {
                "image": f"../../preprocessed/{store.name}"}
            assert meta["multiscales"][0]["type"] == "nearest"
        if stage == "probabilities":
            classes = zarr.open_group(str(store), mode="r").attrs["unetpipe"]["classes"]
            assert [c["label"] for c in meta["omero"]["channels"]] == classes
        for label in sorted((store / "labels").glob("*")):
            if label.is_dir():
                assert type(ngff.validate(label)).__name__ == "ImageLabel", label


def test_empty_glob_names_the_key(tmp_path):
    config = {"data": {"train": {"images": None, "labels": None},
                       "val": {"images": None, "labels": None},
                       "predict": {"images": "mine/*.tif", "labels": None}}}
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=config)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "unetpipe: config key 'data.predict.images': the pattern 'mine/*.tif' matches no file")


def test_bad_user_file_fails_its_job_with_one_clear_line(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "broken.tif").write_bytes(b"not an image")
    write_tiff(tmp_path / "mine" / "good.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64),
               axes="yx")
    config = {"data": {"train": {"images": None, "labels": None},
                       "val": {"images": None, "labels": None},
                       "predict": {"images": "mine/*.tif", "labels": None}}}
    proc = snakemake(tmp_path, "--cores", "1", "--keep-going", config=config)
    assert proc.returncode == 1
    # the job's own error line reaches the terminal, not only the log
    assert "unetpipe preprocess: error: mine/broken.tif: not a readable TIFF file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "results/preprocessed").iterdir()) == [
        "good.ome.zarr"]
    log = (tmp_path / "results/logs/preprocess/broken.log").read_text()
    assert "not a readable TIFF file" in log


@pytest.mark.slow
def test_killed_snakemake_resumes_prediction_from_the_partial_store(tmp_path):
    """Snakemake keeps the undeclared partial store of a killed predict job, and
    the rerun predicts only the blocks still missing."""
    import signal
    import time

    import torch

    from unetpipe.io.resume import DONE_DIR, partial_path
    from unetpipe.nn.checkpoint import FORMAT, VERSION, save_checkpoint
    from unetpipe.nn.model import UNet

    torch.manual_seed(0)
    model = UNet(ndim=2, depth=2, features=8, out_channels=3).eval()
    save_checkpoint({"format": FORMAT, "version": VERSION, "iteration": 0,
                     "model": {"class": "UNet", "config": model.config,
                               "state_dict": model.state_dict()},
                     "targets": {"mode": "three_class"},
                     "data": {"ndim": 2, "channels": 1, "spacing": [1.0, 1.0], "unit": None}},
                    tmp_path / "mine.pt")
    config = {**TINY, "demo": {**TINY["demo"], "predict_shape": [640, 512]},
              "predict": {"checkpoint": "mine.pt", "block": [32, 32], "workers": 1}}
    first = snakemake(tmp_path, "--cores", "1", "--until", "preprocess", config=config)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "results/probabilities/predict_000.ome.zarr"
    markers = partial_path(out) / DONE_DIR
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (markers.is_dir() and len(os.listdir(markers)) >= 40):
        assert proc.poll() is None and time.monotonic() < deadline, "predict did not start"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake, the job's shell and unetpipe
    proc.wait()
    time.sleep(1)  # the killed job's processes are gone
    done = len(os.listdir(markers))
    assert not out.exists() and done < 320

    # as a user does after Snakemake itself was killed: unlock, rerun incomplete jobs
    unlock = snakemake(tmp_path, "--unlock")
    assert unlock.returncode == 0, unlock.stderr
    again = snakemake(tmp_path, "--cores", "1", "--rerun-incomplete")
    assert again.returncode == 0, again.stderr
    log = (tmp_path / "results/logs/predict/predict_000.log").read_text()
    assert f"({320 - done} computed, 0 skipped as empty, {done} done before)" in log, log
    assert out.is_dir() and not partial_path(out).exists()
    image = read_image(tmp_path / "results/preprocessed/predict_000.ome.zarr").data.compute()
    probs = read_image(out).data.compute()
    assert np.abs(probs - predict_array(model, image)).max() <= 1e-4
