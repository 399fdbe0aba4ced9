"""The built-in demo data set (``unetpipe.inputs.demo``).

test_samples checks the manifest's order; the generator itself is tested in
test_synth. Here: what ``write_demo`` puts on disk, read back with tifffile.
"""

import os

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from unetpipe.inputs.demo import DemoItem, demo_files, demo_image, write_demo
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import read_image

SMALL = {"n_train": 2, "n_val": 1, "n_predict": 1, "train_shape": (40, 48),
         "predict_shape": (64, 56)}


def read(path):
    return tifffile.imread(path)


@pytest.fixture(scope="module")
def demo_2d(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    return directory, write_demo(directory, seed=5, progress=False, **SMALL)


def test_demo_files_lists_images_and_labels_per_role(tmp_path):
    d = str(tmp_path)
    assert demo_files(d, n_train=2, n_val=0, n_predict=1) == [
        f"{d}/train/images/train_000.tif", f"{d}/train/labels/train_000.tif",
        f"{d}/train/images/train_001.tif", f"{d}/train/labels/train_001.tif",
        f"{d}/predict/images/predict_000.tif", f"{d}/predict/labels/predict_000.tif",
    ]
    assert demo_files(d, n_train=0, n_val=0, n_predict=0) == []


def test_write_demo_writes_exactly_the_promised_files(demo_2d):
    directory, written = demo_2d
    promised = demo_files(str(directory), n_train=2, n_val=1, n_predict=1)
    assert written == promised
    on_disk = sorted(os.path.join(root, f) for root, _, files in os.walk(directory)
                     for f in files)
    assert on_disk == sorted(promised)  # nothing else, no temporary files


def test_images_and_labels_match_and_labels_are_instances(demo_2d):
    _, written = demo_2d
    for image_path, labels_path in zip(written[::2], written[1::2], strict=True):
        image, labels = read(image_path), read(labels_path)
        shape = SMALL["predict_shape"] if "/predict/" in image_path else SMALL["train_shape"]
        assert image.shape == labels.shape == shape
        assert image.dtype == np.uint16 and np.issubdtype(labels.dtype, np.unsignedinteger)
        ids = np.unique(labels)
        assert ids[0] == 0 and len(ids) >= 3, ids  # background and several nuclei
        for i in ids[1:]:  # every id is one connected object
            assert ndi.label(labels == i)[1] == 1, (labels_path, i)
        # nuclei are bright: the image follows the labels
        assert image[labels > 0].mean() > 1.5 * image[labels == 0].mean()


def test_the_files_hold_what_demo_image_and_the_generator_give(demo_2d):
    directory, _ = demo_2d
    item = DemoItem("val", "val_000", 0)
    image, labels = demo_image(item, seed=5, train_shape=SMALL["train_shape"])
    np.testing.assert_array_equal(read(directory / item.image), image)
    np.testing.assert_array_equal(read(directory / item.labels), labels)
    # the documented seed: one stream per (seed, role, index)
    seed = int(np.random.SeedSequence([5, 1, 0]).generate_state(1)[0])
    np.testing.assert_array_equal(synthetic_nuclei((40, 48), seed=seed)[1], labels)


def test_the_demo_is_the_same_for_a_seed_and_each_image_its_own(demo_2d, tmp_path):
    directory, written = demo_2d
    again = write_demo(tmp_path / "again", seed=5, progress=False, **SMALL)
    for a, b in zip(written, again, strict=True):
        np.testing.assert_array_equal(read(a), read(b))
    train0, train1 = (read(directory / f"train/labels/train_00{i}.tif") for i in (0, 1))
    assert not np.array_equal(train0, train1)
    other = write_demo(tmp_path / "other", seed=6, progress=False, **SMALL)
    assert not np.array_equal(read(other[1]), read(written[1]))
    # fewer training images change no other image
    fewer = write_demo(tmp_path / "fewer", seed=5, progress=False, **{**SMALL, "n_train": 1})
    assert len(fewer) == 6
    for rel in ("train/labels/train_000.tif", "val/images/val_000.tif",
                "predict/labels/predict_000.tif"):
        np.testing.assert_array_equal(read(tmp_path / "fewer" / rel), read(directory / rel))


def test_a_3d_demo_with_its_pixel_size(tmp_path):
    written = write_demo(tmp_path, ndim=3, seed=1, n_train=1, n_val=0, n_predict=1,
                         train_shape=(6, 24, 28), predict_shape=(8, 32, 24),
                         spacing=(2.0, 0.5, 0.5), progress=False)
    assert len(written) == 4
    for path, shape in zip(written, [(6, 24, 28)] * 2 + [(8, 32, 24)] * 2, strict=True):
        img = read_image(path)
        assert img.axes == "zyx" and img.data.shape == shape
        assert img.spacing == pytest.approx((2.0, 0.5, 0.5)) and img.unit == "micrometer"
    labels = read(written[1])
    assert labels.max() > 0 and all(ndi.label(labels == i)[1] == 1
                                    for i in np.unique(labels)[1:])


@pytest.mark.parametrize("kwargs, message", [
    ({"train_shape": (8, 8, 8)}, r"train_shape \(8, 8, 8\) does not have 2 dimensions"),
    ({"predict_shape": (8,)}, r"predict_shape \(8,\) does not have 2 dimensions"),
    ({"spacing": (1.0, 1.0, 1.0)}, r"spacing \(1.0, 1.0, 1.0\) does not have 2 values"),
])
def test_shapes_and_spacing_must_match_the_dimensions(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_demo(tmp_path, n_train=1, n_val=0, n_predict=0, progress=False, **kwargs)
    assert os.listdir(tmp_path) == []  # refused before anything was written
