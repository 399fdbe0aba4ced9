"""The targets stage: blockwise targets and weight maps from preprocessed stores."""

import numpy as np
import pytest
import zarr
from oracle import weight_map_oracle

from unetpipe.core.errors import InputError
from unetpipe.inputs.synth import random_nuclei_labels, touching_pairs
from unetpipe.io.images import write_ome_zarr
from unetpipe.stages.targets import write_targets
from unetpipe.stages.weights import separation_weight_map, targets_for_mode


def _store(path, labels, *, spacing, unit, chunks):
    image = np.zeros((1, *labels.shape), np.float32)
    return write_ome_zarr(path, image, axes="c" + "zyx"[-labels.ndim:], spacing=spacing,
                          unit=unit, chunks=chunks, labels={"gt": labels})


def _read(out):
    root = zarr.open_group(str(out), mode="r")
    return np.asarray(root["targets"]), np.asarray(root["weights"]), root


@pytest.mark.parametrize(("mode", "chunks"), [("two_class", (64, 64)), ("three_class", (64, 64)),
                                            ("two_class", (16, 12)), ("three_class", (12, 16))])
def test_blockwise_matches_the_definition_2d(tmp_path, mode, chunks):
    # chunks (16, 12) and (12, 16) are smaller than the border term's halo (21)
    labels = random_nuclei_labels((200, 180), rng=8)
    assert len(touching_pairs(labels)) > 5
    store = _store(tmp_path / "s.ome.zarr", labels, spacing=(1, 1), unit=None, chunks=chunks)
    result = write_targets(store, tmp_path / "t.zarr", mode=mode, sigma=5.0, progress=False)
    targets, weights, root = _read(tmp_path / "t.zarr")
    assert root["weights"].chunks == chunks and root["targets"].dtype == np.uint8
    expected_targets, expected, border = weight_map_oracle(labels, sigma=5.0, mode=mode)
    np.testing.assert_array_equal(targets, expected_targets)
    np.testing.assert_array_equal(targets, targets_for_mode(labels, mode))
    np.testing.assert_allclose(weights, expected, atol=1e-2)  # 1e-3 * w0: the truncation
    strong = border >= 0.01 * 10.0
    assert strong.sum() > 100
    np.testing.assert_allclose(weights[strong], expected[strong], atol=1e-5)
    counts = np.bincount(expected_targets.ravel())
    assert list(result.class_counts) == counts.tolist()
    assert root.attrs["unetpipe"]["class_counts"] == counts.tolist()
    assert result.weight_max == pytest.approx(expected.max(), abs=1e-5)


@pytest.mark.parametrize("chunks", [(8, 32, 32), (4, 16, 12)])  # halo (6, 17, 17)
def test_blockwise_3d_with_anisotropic_spacing_uses_physical_sigma(tmp_path, chunks):
    spacing = (2.0, 0.5, 0.5)
    labels = random_nuclei_labels((18, 80, 72), spacing=spacing, radius=(6, 10), rng=9)
    store = _store(tmp_path / "s.ome.zarr", labels, spacing=spacing, unit="micrometer",
                   chunks=chunks)
    write_targets(store, tmp_path / "t.zarr", sigma=2.0, progress=False)
    _, weights, root = _read(tmp_path / "t.zarr")
    _, expected, border = weight_map_oracle(labels, sigma=2.0, spacing=spacing)
    np.testing.assert_allclose(weights, expected, atol=1e-2)
    strong = border >= 0.01 * 10.0
    assert strong.sum() > 50
    np.testing.assert_allclose(weights[strong], expected[strong], atol=1e-5)
    assert root.attrs["unetpipe"]["spacing"] == list(spacing)
    assert root["targets"].metadata.dimension_names == ("z", "y", "x")


def test_uncalibrated_store_uses_pixel_sigma(tmp_path):
    labels = random_nuclei_labels((96, 96), rng=2)
    store = _store(tmp_path / "s.ome.zarr", labels, spacing=(1, 1), unit=None, chunks=(96, 96))
    write_targets(store, tmp_path / "t.zarr", sigma=3.0, w0=5.0, class_balance=False,
                  progress=False)
    _, weights, _ = _read(tmp_path / "t.zarr")
    np.testing.assert_allclose(
        weights, separation_weight_map(labels, sigma=3.0, w0=5.0, class_balance=False),
        atol=5e-3)


def test_store_without_labels_is_refused(tmp_path):
    path = write_ome_zarr(tmp_path / "s.ome.zarr", np.zeros((1, 16, 16), np.float32),
                          axes="cyx", spacing=(1, 1))
    with pytest.raises(InputError, match=r"s.ome.zarr: has no ground-truth labels"):
        write_targets(path, tmp_path / "t.zarr", progress=False)
    assert not (tmp_path / "t.zarr").exists()
