"""Calibration to the user's data: the tune stage's settings travel with the model
(checkpoint, info, export, probability stores), segment uses them unless the
config sets a value, training validates by the real segmentation, holds out
data when there is no validation image, and stops on a plateau."""

import json
import logging

import numpy as np
import pytest
import yaml
from test_tune import too_wide

from unetpipe import cli
from unetpipe.core.config import validate_config
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import read_labels, write_ome_zarr
from unetpipe.nn.data import open_training_sample
from unetpipe.nn.models import load_checkpoint
from unetpipe.stages.instances import SegmentParams, resolve_params, segment_array
from unetpipe.stages.metrics import score
from unetpipe.stages.targets import write_targets
from unetpipe.stages.train import hold_out_region, train_model
from unetpipe.stages.tune import TuneSearch, read_tuned, tune_params, tuned_of_store

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = {
    "model": {"depth": 2, "features": 4},
    "train": {"iterations": 40, "patch": [32, 32], "batch_size": 4, "val_every": 20,
              "minutes": None, "checkpoint_every": 10, "warmup": 0, "lr": 0.01},
}


def config(**sections):
    cfg = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return validate_config(cfg)


def preprocessed(folder, name, image, labels, *, targets=False):
    lo, hi = np.percentile(image, [1, 99.8])
    norm = ((image - lo) / (hi - lo)).astype(np.float32)[None]
    store = write_ome_zarr(folder / f"{name}.ome.zarr", norm, axes="cyx", spacing=(1, 1),
                           unit=None, chunks=(32, 32), labels={"gt": labels})
    if not targets:
        return str(store)
    tgt = folder / f"{name}.zarr"
    write_targets(store, tgt, progress=False)
    return str(store), str(tgt)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on one 96 x 96 image, a validation image, and the folder."""
    folder = tmp_path_factory.mktemp("calibration")
    image, labels = synthetic_nuclei((96, 96), seed=3)
    train = preprocessed(folder, "train0", image, labels, targets=True)
    image, labels = synthetic_nuclei((96, 96), seed=4)
    val = preprocessed(folder, "val0", image, labels)
    model = folder / "model"
    train_model([train], [val], model, config=config(), progress=False)
    return folder, train, val, model / "checkpoint_best.pt"


# --- where every setting comes from ---------------------------------------------------


def test_config_wins_then_tuned_then_built_in():
    tuned = {"method": "watershed", "seeds": "classes", "threshold": 0.7, "foreground": 0.55,
             "grow": None, "h": 2.0, "min_size": 4.0}
    params, sources = resolve_params({"threshold": 0.5, "max_size": 900}, tuned)
    assert (params.threshold, sources["threshold"]) == (0.5, "config")
    assert (params.foreground, sources["foreground"]) == (0.55, "tuned")
    assert (params.min_size, sources["min_size"]) == (4.0, "tuned")
    assert (params.max_size, sources["max_size"]) == (900, "config")
    assert (params.fill_holes, sources["fill_holes"]) == (None, "default")
    # nothing tuned: the built-in defaults
    params, sources = resolve_params({}, None)
    assert params == SegmentParams() and set(sources.values()) == {"default"}
    # settings tuned for the watershed do not carry over to another method
    params, sources = resolve_params({"method": "components"}, tuned)
    assert params == SegmentParams(method="components")
    assert sources["threshold"] == "default" and sources["method"] == "config"
    # nor to other seeds
    params, _ = resolve_params({"seeds": "distance"}, tuned)
    assert params.threshold == SegmentParams().threshold


# --- training ---------------------------------------------------------------------------


def test_hold_out_region_splits_the_longest_in_plane_axis():
    assert hold_out_region((200, 300), 0.2) == (((0, 200), (0, 240)), ((0, 200), (240, 300)))
    # stacks: z is never split, even when it is the longest axis
    assert hold_out_region((400, 100, 80), 0.25) == (((0, 400), (0, 68), (0, 80)),
                                                     ((0, 400), (68, 100), (0, 80)))
    assert hold_out_region((60, 60), 0.2) is None  # 32 held out would leave 28


def test_one_training_image_holds_out_a_slab_never_trained_on(tmp_path, caplog):
    image, labels = synthetic_nuclei((96, 96), seed=5)
    train = preprocessed(tmp_path, "only", image, labels, targets=True)
    caplog.set_level(logging.INFO, logger="unetpipe")
    train_model([train], [], tmp_path / "model", config=config(train={"iterations": 20}),
                progress=False)
    ckpt = load_checkpoint(tmp_path / "model" / "checkpoint_best.pt")
    region = ckpt["data"]["val_region"]
    assert region == {"sample": "only", "box": [[0, 96], [64, 96]],
                      "train_box": [[0, 96], [0, 64]]}
    assert ckpt["data"]["val"] == ["only"] and ckpt["val_ap"] is not None
    assert "holding out [0:96, 64:96] of the one training image only" in caplog.text
    # the sampler sees only the training box: its targets are the image's left part
    sample = open_training_sample(*train, region=[[0, 96], [0, 64]])
    full = open_training_sample(*train)
    assert sample.shape == (96, 64)
    np.testing.assert_array_equal(np.asarray(sample.targets[:, :]),
                                  np.asarray(full.targets[:, :64]))
    np.testing.assert_array_equal(np.asarray(sample.image[:, 10:20, 5:9]),
                                  np.asarray(full.image[:, 10:20, 5:9]))
    assert int(sample.cells[:, 1].max()) < 64


def test_validation_scores_the_segmentation_and_keeps_the_best_mean_ap(trained):
    folder, *_ = trained
    rows = [r for r in (folder / "model" / "history.csv").read_text().splitlines()[1:]]
    header = (folder / "model" / "history.csv").read_text().splitlines()[0].split(",")
    scored = [dict(zip(header, r.split(","), strict=True)) for r in rows]
    scored = [r for r in scored if r["val_mean_ap"]]
    assert [int(r["iteration"]) for r in scored] == [20, 40]
    ckpt = load_checkpoint(trained[3])
    best = max(scored, key=lambda r: (float(r["val_mean_ap"]), float(r["val_ap"])))
    assert ckpt["iteration"] == int(best["iteration"])
    assert ckpt["val_select"] == "segmentation"
    assert ckpt["val_mean_ap"] == pytest.approx(float(best["val_mean_ap"]), abs=1e-6)
    assert ckpt["val_mean_ap"] <= ckpt["val_ap"]  # mean over stricter IoU thresholds


def test_patience_stops_training_on_a_plateau(tmp_path, trained):
    _, train, val, _ = trained
    # a learning rate too small to change anything: the score never improves
    cfg = config(train={"iterations": 400, "val_every": 10, "patience": 2, "lr": 1e-12,
                        "schedule": "constant"})
    result = train_model([train], [val], tmp_path, config=cfg, progress=False)
    assert result.stopped_by == "plateau"
    assert result.iterations == 30 and result.best_iteration == 10
    # the run is finished: starting it again does not resume it
    again = train_model([train], [val], tmp_path, config=cfg, progress=False)
    assert again.start_iteration == 0


# --- the tune stage and where its settings go ---------------------------------------------


@pytest.fixture(scope="module")
def tuned_model(trained):
    folder, _, val, checkpoint = trained
    out, params = folder / "checkpoint_tuned.pt", folder / "segment_params.yaml"
    assert cli.main(["--quiet", "tune", str(checkpoint), str(out), "--params", str(params),
                     "--val-images", val, "--windows", "1"]) == 0
    return out, params


def test_tuned_settings_round_trip_through_checkpoint_yaml_info_and_export(trained, tuned_model,
                                                                          tmp_path, capsys):
    _, _, _, checkpoint = trained
    out, params = tuned_model
    written = yaml.safe_load(params.read_text())
    assert params.read_text().startswith("# unetpipe")
    ckpt, original = load_checkpoint(out), load_checkpoint(checkpoint)
    assert ckpt["segment_params"] == written == read_tuned(out) == read_tuned(params)
    assert written["validation"] == ["val0"] and written["objective"] == "mean_ap"
    assert written["score"] >= written["defaults_score"]
    assert SegmentParams(**written["params"]).check()
    # the weights are the trained ones
    for k, v in original["model"]["state_dict"].items():
        assert np.array_equal(v.numpy(), ckpt["model"]["state_dict"][k].numpy()), k
    assert "segment_params" not in original
    # info shows them
    assert cli.main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["segmentation"]["params"] == written["params"]
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "segmentation (tuned by `unetpipe tune`)" in text
    assert f"threshold       {written['params']['threshold']:.3f}" in text
    assert cli.main(["info", str(checkpoint)]) == 0
    assert "not tuned" in capsys.readouterr().out
    # an exported package carries them, and reads back as a model with them
    package = tmp_path / "model.zip"
    assert cli.main(["--quiet", "export", str(out), str(package), "--no-validate"]) == 0
    assert read_tuned(package) == written
    assert load_checkpoint(package)["segment_params"] == written


def test_prediction_with_a_tuned_model_carries_its_settings(trained, tuned_model, tmp_path):
    _, _, val, _ = trained
    out, params = tuned_model
    probs = tmp_path / "p.ome.zarr"
    assert cli.main(["--quiet", "predict", str(out), val, str(probs)]) == 0
    assert tuned_of_store(probs) == yaml.safe_load(params.read_text())
    plain = tmp_path / "q.ome.zarr"
    assert cli.main(["--quiet", "predict", str(trained[3]), val, str(plain)]) == 0
    assert tuned_of_store(plain) is None


def test_tune_reports_a_bad_objective_before_predicting(trained, tmp_path, capsys):
    _, _, val, checkpoint = trained
    assert cli.main(["tune", str(checkpoint), str(tmp_path / "t.pt"), "--val-images", val,
                     "--objective", "ap_2"]) != 0
    assert "tune.objective" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()


def test_tune_without_validation_images_uses_what_training_held_out(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=6)
    train = preprocessed(tmp_path, "single", image, labels, targets=True)
    train_model([train], [], tmp_path / "model", config=config(train={"iterations": 10,
                                                                      "val_every": 10}),
                progress=False)
    out, log = tmp_path / "tuned.pt", tmp_path / "tune.log"
    assert cli.main(["--log", str(log), "tune", str(tmp_path / "model" / "checkpoint_best.pt"),
                     str(out), "--train-images", train[0]]) == 0
    assert "tuning on the held-out slab training held out: single [0:96, 64:96]" \
        in log.read_text()
    assert load_checkpoint(out)["segment_params"]["validation"] == ["single"]


# --- segment: tuned values unless the config sets them ------------------------------------


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A probability store whose objects are a pixel too wide, the truth, and the
    settings tuned on it."""
    folder = tmp_path_factory.mktemp("wide")
    _, labels = synthetic_nuclei((128, 128), seed=1)
    probs = too_wide(labels, seed=1)
    result = tune_params([(probs, labels)], progress=False)
    summary = {"params": {k: getattr(result.params, k) for k in
                          ("method", "threshold", "foreground", "grow", "seeds", "h",
                           "min_size", "max_size", "fill_holes")},
               "score": result.score, "defaults_score": result.defaults_score,
               "objective": "mean_ap"}
    store = write_ome_zarr(folder / "probs.ome.zarr", probs, axes="cyx", spacing=(1, 1),
                           unit=None, chunks=(64, 64))
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    group.attrs["unetpipe"] = {**dict(group.attrs.get("unetpipe", {})), "stage": "predict",
                               "segment_params": summary}
    params_file = folder / "segment_params.yaml"
    params_file.write_text("# unetpipe test\n" + yaml.safe_dump(summary))
    return folder, store, labels, probs, result


def test_segment_uses_the_tuned_settings_a_store_carries(wide, tmp_path):
    _, store, labels, probs, result = wide
    log = tmp_path / "segment.log"
    assert cli.main(["--log", str(log), "segment", str(store), str(tmp_path / "l.ome.zarr")]) == 0
    got = read_labels(tmp_path / "l.ome.zarr").data.compute()
    np.testing.assert_array_equal(got > 0, segment_array(probs, params=result.params) > 0)
    assert score(labels, got).mean_ap == pytest.approx(result.score, abs=0.02)
    assert score(labels, got).mean_ap > result.defaults_score + 0.2
    assert f"threshold {result.params.threshold!r} (tuned)" in log.read_text()


def test_an_explicit_config_value_wins_over_the_tuned_one(wide, tmp_path):
    folder, store, _labels, probs, result = wide
    explicit = 0.9 if result.params.threshold < 0.8 else 0.3
    log = tmp_path / "segment.log"
    assert cli.main(["--log", str(log), "segment", str(store), str(tmp_path / "l.ome.zarr"),
                     "--threshold", str(explicit)]) == 0
    got = read_labels(tmp_path / "l.ome.zarr").data.compute()
    want = segment_array(probs, params=SegmentParams(**{**result.params.__dict__,
                                                        "threshold": explicit}))
    np.testing.assert_array_equal(got > 0, want > 0)
    assert int(got.max()) == int(want.max())
    assert f"threshold {explicit!r} (config)" in log.read_text()
    assert f"foreground {result.params.foreground!r} (tuned)" in log.read_text()
    # --params names the tuned settings to use; a config file's value wins the same way
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"segment: {{threshold: {explicit}}}\n")
    assert cli.main(["--quiet", "segment", str(store), str(tmp_path / "m.ome.zarr"),
                     "--params", str(folder / "segment_params.yaml"),
                     "--configfile", str(cfg)]) == 0
    np.testing.assert_array_equal(read_labels(tmp_path / "m.ome.zarr").data.compute(), got)


def test_segment_refuses_params_that_hold_no_settings(wide, tmp_path, capsys):
    _, store, *_ = wide
    bad = tmp_path / "p.yaml"
    bad.write_text("threshold: 0.5\n")
    assert cli.main(["segment", str(store), str(tmp_path / "l.ome.zarr"),
                     "--params", str(bad)]) != 0
    assert "holds no 'params' mapping" in capsys.readouterr().err


def test_settings_the_config_sets_are_held_in_the_search(wide):
    _, _, labels, probs, _ = wide
    start = SegmentParams(threshold=0.35, min_size=5)
    result = tune_params([(probs, labels)], start=start, progress=False,
                         search=TuneSearch(fixed=("threshold", "min_size")))
    tried = [p for p, _ in result.history]
    assert {p["threshold"] for p in tried} == {0.35} and {p["min_size"] for p in tried} == {5}
    assert len({p["foreground"] for p in tried}) > 3  # the rest is searched
    assert result.params.threshold == 0.35 and result.score >= result.defaults_score
