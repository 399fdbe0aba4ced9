"""The command line, run as a user runs it: a separate process, exit status, stderr."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

from unetpipe.io.images import read_image, read_labels, write_tiff


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unetpipe", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("unetpipe ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 1000, size=(48, 40)).astype(np.uint16)
    return write_tiff(tmp_path / "img.tif", data, axes="yx", spacing=(0.5, 0.5))


def test_help_lists_commands_and_options():
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("synth", "preprocess", "targets", "train", "predict", "config"):
        assert command in proc.stdout
    proc = run("predict", "--help")
    assert proc.returncode == 0
    for option in ("--block", "--halo", "--tta", "--skip-empty", "--workers", "--scheduler",
                   "--resume", "--threads"):
        assert option in proc.stdout
    proc = run("preprocess", "--help")
    assert proc.returncode == 0
    for option in ("--percentiles", "--spacing", "--axes", "--chunks", "--labels", "--configfile"):
        assert option in proc.stdout


def test_every_config_key_is_an_option_with_its_schema_help_or_named_as_workflow_only(capsys):
    import argparse
    import json

    from unetpipe.cli import build_parser
    from unetpipe.core.config import key_schema, leaf_keys

    parser = build_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    exposed = set()
    for name, sub in commands.items():
        for action in sub._actions:
            if not action.dest.startswith("cfg:"):
                continue
            key = action.dest[4:]
            exposed.add(key)
            schema = key_schema(key)
            default = schema.get("default")
            shown = default if isinstance(default, str) else json.dumps(default)
            text = action.help.replace("%%", "%")
            assert text == f"{schema['description']} Config key {key}; default: {shown}.", name
            if "enum" in schema:
                assert action.metavar == "{" + ",".join(
                    "null" if v is None else str(v) for v in schema["enum"]) + "}"
        # every command's help renders, with its description
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([name, "--help"])
        assert stop.value.code == 0
        # (argparse wraps lines at spaces and hyphens)
        out = "".join(capsys.readouterr().out.split())
        assert "".join(sub.description.split()) in out, name
    workflow_only = [k for k in leaf_keys() if k not in exposed]
    assert workflow_only, "the data paths are the workflow's"
    epilog = " ".join(parser.epilog.split())
    for key in workflow_only:
        assert key in epilog or key.rsplit(".", 1)[0] in epilog, key
    # and the epilog names no key that is an option after all
    for named in ("data.curated", "results", "predict.checkpoint"):
        assert named not in exposed


def test_preprocess_writes_store_and_log(tmp_path, image):
    out = tmp_path / "res" / "img.ome.zarr"
    logfile = tmp_path / "logs" / "p.log"
    proc = run("--log", logfile, "preprocess", image, out, "--percentiles", "0", "100",
               "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # messages go to the log under Snakemake
    stored = read_image(out)
    assert stored.spacing == (0.5, 0.5)
    values = stored.data.compute()
    assert values.min() == 0 and values.max() == pytest.approx(1)
    text = logfile.read_text()
    assert "preprocess:" in text and "shape 1x48x40 (cyx)" in text


def test_bad_config_option_names_the_key(tmp_path, image):
    proc = run("preprocess", image, tmp_path / "o.ome.zarr", "--percentiles", "99", "1")
    assert_one_line_error(proc, "config key 'preprocess.percentiles'")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preprocess:\n  percentile: [1, 99]\n")
    proc = run("preprocess", image, tmp_path / "o.ome.zarr", "--configfile", cfg)
    assert_one_line_error(proc, "config key 'preprocess.percentile' is not known",
                          "did you mean 'preprocess.percentiles'")
    assert not (tmp_path / "o.ome.zarr").exists()


def _nan_image(d):
    data = np.ones((40, 40), np.float32)
    data[::7, ::5] = np.nan
    return write_tiff(d / "nan.tif", data, axes="yx")


def _corrupt(d):
    (d / "corrupt.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    return d / "corrupt.tif"


def _four_d(d):
    zarr.create_array(str(d / "four.zarr"), shape=(2, 3, 16, 16), dtype="u2")
    return d / "four.zarr"


def _time_series(d):
    tifffile.imwrite(d / "movie.tif", np.zeros((3, 2, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "TZYX"})
    return d / "movie.tif"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_nan_image, "nan.tif: the image contains NaN"),
        (_corrupt, "corrupt.tif: not a readable TIFF file"),
        (_four_d, "four.zarr: cannot tell the axes of this 4-D image"),
        (_time_series, "movie.tif: has 3 time points"),
        (lambda d: d / "missing.tif", "missing.tif: file not found"),
    ],
)
def test_bad_input_one_line_no_traceback_no_output(tmp_path, make, fragment):
    path = make(tmp_path)
    out = tmp_path / "out" / "x.ome.zarr"
    proc = run("preprocess", path, out)
    assert_one_line_error(proc, "unetpipe preprocess: error:", fragment)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path / "out") if "x.ome.zarr" in p] if (tmp_path / "out").exists() else True


def test_labels_not_matching_image(tmp_path, image):
    labels = write_tiff(tmp_path / "lab.tif", np.ones((48, 41), np.uint16), axes="yx")
    proc = run("preprocess", image, tmp_path / "o.ome.zarr", "--labels", labels)
    assert_one_line_error(proc, "lab.tif: labels have shape (48, 41) but the image",
                          "has spatial shape (48, 40)")
    empty = write_tiff(tmp_path / "empty.tif", np.zeros((48, 40), np.uint16), axes="yx")
    proc = run("preprocess", image, tmp_path / "o.ome.zarr", "--labels", empty)
    assert_one_line_error(proc, "empty.tif: labels contain no object")
    assert sorted(os.listdir(tmp_path)) == ["empty.tif", "img.tif", "lab.tif"]


def test_debug_shows_the_traceback(tmp_path):
    proc = run("--debug", "preprocess", _corrupt(tmp_path), tmp_path / "o.ome.zarr")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "InputError" in proc.stderr


def test_config_command(tmp_path):
    proc = run("config")
    assert proc.returncode == 0 and "percentiles:" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("results: 3\ndemo: {ndim: 5}\n")
    proc = run("config", bad)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "unetpipe config: error: config key 'demo.ndim': 5 is not one of [2, 3]",
        "unetpipe config: error: config key 'results': 3 is not of type string",
    ]


def test_synth_writes_a_readable_demo(tmp_path):
    proc = run("synth", "--dir", tmp_path / "demo", "--n-train", "2", "--n-val", "1",
               "--n-predict", "1", "--train-shape", "64", "64", "--predict-shape", "96", "128",
               "--spacing", "0.5", "0.5", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(p.relative_to(tmp_path / "demo")) for p in (tmp_path / "demo").rglob("*.tif"))
    assert files == ["predict/images/predict_000.tif", "predict/labels/predict_000.tif",
                     "train/images/train_000.tif", "train/images/train_001.tif",
                     "train/labels/train_000.tif", "train/labels/train_001.tif",
                     "val/images/val_000.tif", "val/labels/val_000.tif"]
    image = read_image(tmp_path / "demo/predict/images/predict_000.tif")
    labels = read_labels(tmp_path / "demo/predict/labels/predict_000.tif")
    assert image.data.shape == (96, 128) and image.spacing == (0.5, 0.5)
    assert labels.data.shape == (96, 128) and labels.data.max().compute() > 5
    # same seed, same data
    proc = run("synth", "--dir", tmp_path / "again", "--n-train", "2", "--n-val", "1",
               "--n-predict", "1", "--train-shape", "64", "64", "--predict-shape", "96", "128",
               "--spacing", "0.5", "0.5", "--seed", "3")
    a = tifffile.imread(tmp_path / "demo/train/images/train_001.tif")
    b = tifffile.imread(tmp_path / "again/train/images/train_001.tif")
    np.testing.assert_array_equal(a, b)


def test_synth_shape_mismatch_names_the_key(tmp_path):
    proc = run("synth", "--dir", tmp_path, "--ndim", "3")
    assert proc.returncode == 1
    assert "config key 'demo.train_shape': [256, 256] has 2 values but demo.ndim is 3" in proc.stderr


def test_targets_command(tmp_path):
    from unetpipe.io.images import write_ome_zarr

    labels = np.zeros((40, 40), np.uint16)
    labels[5:20, 5:20] = 1
    labels[5:20, 20:35] = 2
    store = write_ome_zarr(tmp_path / "s.ome.zarr", np.zeros((1, 40, 40), np.float32),
                           axes="cyx", spacing=(1, 1), labels={"gt": labels})
    proc = run("targets", store, tmp_path / "t.zarr", "--sigma", "2", "--mode", "three_class")
    assert proc.returncode == 0, proc.stderr
    root = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert root.attrs["unetpipe"]["mode"] == "three_class"
    assert set(np.unique(root["targets"][:])) == {0, 1, 2}
    # a gap pixel of cell 1: 1 pixel from the rest of cell 1, 2 from cell 2's
    w_background = root.attrs["unetpipe"]["class_weights"][0]
    assert root["weights"][12, 19] == pytest.approx(w_background + 10 * np.exp(-9 / 8), rel=1e-6)
    bare = write_ome_zarr(tmp_path / "b.ome.zarr", np.zeros((1, 8, 8), np.float32), axes="cyx",
                          spacing=(1, 1))
    proc = run("targets", bare, tmp_path / "u.zarr")
    assert_one_line_error(proc, "unetpipe targets: error:", "b.ome.zarr: has no ground-truth labels")
    proc = run("targets", store, tmp_path / "u.zarr", "--mode", "four_class")
    assert_one_line_error(proc, "config key 'targets.mode': 'four_class' is not one of")
