import os

import pytest

from unetpipe.core.config import validate_config
from unetpipe.core.errors import ConfigError
from unetpipe.inputs.demo import demo_files, demo_manifest
from unetpipe.inputs.samples import sample_name, sample_table, uses_demo


@pytest.mark.parametrize(
    ("path", "name"),
    [("a/cells_01.tif", "cells_01"), ("a/b.ome.tif", "b"), ("x.TIFF", "x"),
     ("s/stack.ome.zarr/", "stack"), ("v.zarr", "v"), ("weird.name.tif", "weird.name"),
     ("no_ext", "no_ext"), ("p/plate.ome.zarr/0", "plate"), ("p/run.zarr/12/", "run"),
     ("p/0", "0")],
)
def test_sample_name(path, name):
    assert sample_name(path) == name


def _touch(*paths):
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").close()


def _config(**data):
    base = {"train": {"images": None, "labels": None}, "val": {"images": None, "labels": None},
            "predict": {"images": None, "labels": None}}
    for role, value in data.items():
        base[role] = value
    return validate_config({"data": base})


def test_default_config_uses_the_demo_manifest_without_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing exists here yet
    cfg = validate_config({})
    assert uses_demo(cfg)
    table = sample_table(cfg)
    assert list(table) == [*(f"train_{i:03d}" for i in range(8)), "val_000", "val_001",
                           "predict_000"]
    assert table["train_003"].image == os.path.normpath("resources/demo/train/images/train_003.tif")
    assert table["train_003"].labels == os.path.normpath("resources/demo/train/labels/train_003.tif")
    assert table["predict_000"].roles == ("predict",)
    assert table["predict_000"].labels is not None


def test_demo_pattern_filters_the_manifest():
    cfg = validate_config({"data": {
        "train": {"images": "resources/demo/train/images/train_00[0-2].tif",
                  "labels": "resources/demo/train/labels/*.tif"},
        "val": {"images": None, "labels": None},
        "predict": {"images": "resources/demo/predict/images/*.tif", "labels": None}}})
    assert list(sample_table(cfg)) == ["train_000", "train_001", "train_002", "predict_000"]


def test_demo_manifest_is_stable():
    items = demo_manifest(n_train=2, n_val=1, n_predict=1)
    assert [(i.role, i.name, i.image) for i in items] == [
        ("train", "train_000", "train/images/train_000.tif"),
        ("train", "train_001", "train/images/train_001.tif"),
        ("val", "val_000", "val/images/val_000.tif"),
        ("predict", "predict_000", "predict/images/predict_000.tif"),
    ]
    assert len(demo_files("d", n_train=2, n_val=1, n_predict=1)) == 8


def test_user_data_by_glob_and_list(tmp_path):
    d = str(tmp_path)
    _touch(f"{d}/img/a.tif", f"{d}/img/b.tif", f"{d}/lab/a.tif", f"{d}/lab/b.tif",
           f"{d}/new/c.ome.zarr/zarr.json", f"{d}/new/.hidden.tif")
    cfg = _config(train={"images": f"{d}/img/*.tif", "labels": f"{d}/lab/*.tif"},
                  predict={"images": [f"{d}/new/c.ome.zarr", f"{d}/img/a.tif"], "labels": None})
    assert not uses_demo(cfg)
    table = sample_table(cfg)
    assert list(table) == ["a", "b", "c"]
    assert table["a"].roles == ("train", "predict")  # the same file in two roles: one sample
    assert table["a"].labels == f"{d}/lab/a.tif"
    assert table["c"].image == f"{d}/new/c.ome.zarr" and table["c"].labels is None


def test_empty_glob_names_the_key_and_pattern(tmp_path):
    cfg = _config(predict={"images": f"{tmp_path}/nothing/*.tif", "labels": None})
    with pytest.raises(ConfigError, match=r"config key 'data.predict.images': the pattern '.*nothing/\*.tif' matches no file"):
        sample_table(cfg)


def test_missing_listed_file(tmp_path):
    cfg = _config(predict={"images": [f"{tmp_path}/gone.tif"], "labels": None})
    with pytest.raises(ConfigError, match=r"'data.predict.images': .*gone.tif: file not found"):
        sample_table(cfg)


def test_training_image_without_labels(tmp_path):
    d = str(tmp_path)
    _touch(f"{d}/img/a.tif", f"{d}/img/b.tif", f"{d}/lab/a.tif", f"{d}/lab/b_masks.tif")
    cfg = _config(train={"images": f"{d}/img/*.tif", "labels": f"{d}/lab/*.tif"})
    with pytest.raises(ConfigError, match=r"'data.train.labels': no labels for .*img/b.tif \(sample 'b'\).*found: a, b_masks"):
        sample_table(cfg)


def test_stem_collision_is_an_error(tmp_path):
    d = str(tmp_path)
    _touch(f"{d}/x/a.tif", f"{d}/y/a.ome.tif")
    cfg = _config(predict={"images": [f"{d}/x/a.tif", f"{d}/y/a.ome.tif"], "labels": None})
    with pytest.raises(ConfigError, match=r"two files have the sample name 'a'"):
        sample_table(cfg)
    _touch(f"{d}/lx/a.tif")
    cfg = _config(train={"images": f"{d}/x/a.tif", "labels": f"{d}/lx/a.tif"},
                  predict={"images": f"{d}/y/a.ome.tif", "labels": None})
    with pytest.raises(ConfigError, match=r"two images have the sample name 'a'"):
        sample_table(cfg)


def test_no_images_at_all():
    with pytest.raises(ConfigError, match="no images"):
        sample_table(_config())


def test_demo_pattern_outside_manifest():
    cfg = validate_config({"data": {"predict": {"images": "resources/demo/predict/images/x_*.tif"}}})
    with pytest.raises(ConfigError, match="points into the demo folder"):
        sample_table(cfg)


def test_own_data_mixed_with_demo_defaults_is_refused(tmp_path):
    d = str(tmp_path)
    _touch(f"{d}/img/a.tif", f"{d}/lab/a.tif")
    # only training data given: validation and prediction still default to the demo
    cfg = validate_config({"data": {"train": {"images": f"{d}/img/*.tif",
                                              "labels": f"{d}/lab/*.tif"}}})
    with pytest.raises(ConfigError) as info:
        sample_table(cfg)
    message = str(info.value)
    assert message.startswith("config key 'data.val.images' still points at the demo")
    assert "'data.val.images' and 'data.val.labels' and 'data.predict.images'" in message


def test_listed_path_with_glob_characters_is_taken_literally(tmp_path):
    d = str(tmp_path)
    _touch(f"{d}/x/cell[1].tif")
    cfg = _config(predict={"images": [f"{d}/x/cell[1].tif"], "labels": None})
    assert list(sample_table(cfg)) == ["cell[1]"]


def test_curated_folders_join_the_training_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch("mine/a.tif", "mine/a_labels/a.tif", "resources/curated/fix1/image.tif",
           "resources/curated/fix1/labels.tif", "resources/curated/fix2/image.ome.zarr/zarr.json",
           "resources/curated/fix2/labels.zarr/zarr.json",
           "resources/curated/exp1.2/image.tif", "resources/curated/exp1.2/labels.tif",
           "resources/curated/.fix3.tmp/image.tif", "resources/curated/notes.txt")
    cfg = _config(train={"images": "mine/*.tif", "labels": "mine/a_labels/*.tif"})
    table = sample_table(cfg)
    assert list(table) == ["a", "curated-exp1.2", "curated-fix1", "curated-fix2"]
    assert table["curated-fix1"].roles == ("train",)
    assert table["curated-fix1"].image == os.path.normpath("resources/curated/fix1/image.tif")
    assert table["curated-fix2"].labels == os.path.normpath("resources/curated/fix2/labels.zarr")
    # switched off, or a folder that does not exist: nothing added
    cfg["data"]["curated"] = None
    assert list(sample_table(cfg)) == ["a"]
    cfg["data"]["curated"] = "elsewhere"
    assert list(sample_table(cfg)) == ["a"]


def test_curated_image_without_labels_names_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch("mine/a.tif", "resources/curated/fix1/image.tif")
    cfg = _config(predict={"images": "mine/*.tif", "labels": None})
    with pytest.raises(ConfigError, match=r"'data\.curated': .*fix1 holds image but no labels"):
        sample_table(cfg)
