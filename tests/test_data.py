"""Training patches read from Zarr: alignment, reproducibility, foreground bias."""

import numpy as np
import pytest

from unetpipe.core.errors import InputError
from unetpipe.inputs.synth import random_nuclei_labels
from unetpipe.io.images import write_ome_zarr
from unetpipe.nn.data import (
    FOREGROUND_CELL,
    PatchSampler,
    Prefetcher,
    _foreground_cells,
    open_training_sample,
)
from unetpipe.stages.targets import write_targets


def make_sample(tmp_path, labels, *, chunks, name="s"):
    """A preprocessed store whose image encodes each pixel's position, and its targets."""
    grids = np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij")
    code = sum(g * 1000**k for k, g in enumerate(reversed(grids))).astype(np.float32)
    image = np.stack([code, -code])  # two channels
    axes = "c" + "zyx"[-labels.ndim:]
    store = write_ome_zarr(tmp_path / f"{name}.ome.zarr", image, axes=axes,
                           spacing=(1.0,) * labels.ndim, unit=None, chunks=chunks,
                           labels={"gt": labels})
    targets = tmp_path / f"{name}.zarr"
    write_targets(store, targets, progress=False)
    return open_training_sample(store, targets)


def origin_of(patch_image, ndim):
    """Decode the patch origin from the position code of its first pixel."""
    v = round(float(patch_image[(0,) + (0,) * ndim]))
    out = []
    for _ in range(ndim):
        out.append(v % 1000)
        v //= 1000
    return tuple(reversed(out))


@pytest.fixture(scope="module")
def sample2d(tmp_path_factory):
    labels = random_nuclei_labels((150, 130), rng=3, fill_fraction=0.15)
    return make_sample(tmp_path_factory.mktemp("d2"), labels, chunks=(64, 48)), labels


def test_patches_are_aligned_with_their_targets(sample2d):
    sample, _labels = sample2d
    targets, weights = np.asarray(sample.targets), np.asarray(sample.weights)
    sampler = PatchSampler([sample], patch_shape=(40, 36), foreground=0.5, seed=1)
    image, t, w = sampler.batch(0, 16)
    assert image.shape == (16, 2, 40, 36) and image.dtype == np.float32
    assert t.shape == (16, 40, 36) and t.dtype == np.uint8 and w.dtype == np.float32
    for k in range(16):
        y, x = origin_of(image[k], 2)
        np.testing.assert_array_equal(image[k, 1], -image[k, 0])
        np.testing.assert_array_equal(t[k], targets[y:y + 40, x:x + 36])
        np.testing.assert_array_equal(w[k], weights[y:y + 40, x:x + 36])


def test_batches_depend_only_on_seed_and_index(sample2d):
    sample, _ = sample2d
    a = PatchSampler([sample], patch_shape=(32, 32), seed=5)
    b = PatchSampler([sample], patch_shape=(32, 32), seed=5)
    for x, y in zip(b.batch(7, 4), a.batch(7, 4), strict=True):  # other order of calls
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.batch(7, 4)[0], a.batch(8, 4)[0])
    assert not np.array_equal(a.batch(7, 4)[0], PatchSampler(
        [sample], patch_shape=(32, 32), seed=6).batch(7, 4)[0])


def test_foreground_bias(sample2d):
    sample, labels = sample2d
    frac = (labels > 0).mean()
    assert frac < 0.25

    def mean_fg(foreground):
        s = PatchSampler([sample], patch_shape=(16, 16), foreground=foreground, seed=0)
        return float(np.mean([(s.batch(i, 8)[1] > 0).mean() for i in range(40)]))

    uniform, biased = mean_fg(0.0), mean_fg(1.0)
    assert abs(uniform - frac) < 0.08  # uniform patches see the image's foreground fraction
    assert biased > uniform + 0.2


def test_foreground_cells_against_brute_force(sample2d):
    sample, _labels = sample2d
    fg = np.asarray(sample.targets) > 0
    cells, sizes, counts = _foreground_cells(sample.targets, FOREGROUND_CELL)
    assert counts.sum() == fg.sum()
    for (y, x), (h, w), n in zip(cells, sizes, counts, strict=True):
        # cells tile the chunks (64, 48) and the image (150, 130): never cross an edge
        assert h == min(FOREGROUND_CELL, 64 - y % 64, 150 - y)
        assert w == min(FOREGROUND_CELL, 48 - x % 48, 130 - x)
        assert fg[y:y + h, x:x + w].sum() == n > 0


def test_patch_larger_than_image_is_mirrored(tmp_path):
    labels = random_nuclei_labels((40, 30), rng=1)
    sample = make_sample(tmp_path, labels, chunks=(40, 30))
    image, t, _w = PatchSampler([sample], patch_shape=(64, 30), seed=0).batch(0, 2)
    assert image.shape == (2, 2, 64, 30)
    full = np.asarray(sample.targets)
    np.testing.assert_array_equal(t[0, :40], full)
    np.testing.assert_array_equal(t[0, 40:], full[::-1][:24])  # symmetric padding


def test_3d_patches(tmp_path):
    labels = random_nuclei_labels((20, 40, 40), rng=2)
    sample = make_sample(tmp_path, labels, chunks=(8, 16, 16))
    image, t, _w = PatchSampler([sample], patch_shape=(8, 24, 24), seed=0).batch(3, 3)
    targets = np.asarray(sample.targets)
    for k in range(3):
        z, y, x = origin_of(image[k], 3)
        np.testing.assert_array_equal(t[k], targets[z:z + 8, y:y + 24, x:x + 24])


def test_mismatched_stores_are_refused(tmp_path):
    a = make_sample(tmp_path, random_nuclei_labels((40, 40), rng=1), chunks=(40, 40), name="a")
    make_sample(tmp_path, random_nuclei_labels((30, 40), rng=1), chunks=(30, 40), name="b")
    with pytest.raises(InputError, match="do not fit"):
        open_training_sample(tmp_path / "a.ome.zarr", tmp_path / "b.zarr")
    with pytest.raises(InputError, match="cannot open"):
        open_training_sample(tmp_path / "missing.ome.zarr", tmp_path / "b.zarr")
    with pytest.raises(ValueError, match="patch shape"):
        PatchSampler([a], patch_shape=(8, 8, 8))


def test_prefetcher_yields_the_sampler_batches_in_order(sample2d):
    sample, _ = sample2d
    sampler = PatchSampler([sample], patch_shape=(24, 24), seed=2)
    with Prefetcher(sampler, batch_size=3, start=10) as batches:
        for expected_index in range(10, 16):
            index, batch = next(batches)
            assert index == expected_index
            for got, want in zip(batch, sampler.batch(index, 3), strict=True):
                np.testing.assert_array_equal(got, want)


def test_prefetcher_passes_errors_on(sample2d):
    class Broken:
        def batch(self, index, batch_size):
            raise OSError("disk gone")

    with Prefetcher(Broken(), batch_size=1) as batches:
        with pytest.raises(OSError, match="disk gone"):
            next(batches)
