import os

import dask.array as da
import numpy as np
import pytest
import zarr

from unetpipe.core.errors import InputError
from unetpipe.io.images import read_image, read_labels, write_tiff
from unetpipe.stages.preprocess import percentile_normalize, preprocess_file, subsample_blocks


def test_percentile_normalize_known_values():
    image = np.arange(101, dtype=np.uint16).reshape(1, 101)
    out = percentile_normalize(image, [10], [60])
    assert out.dtype == np.float32
    assert out[0, 10] == 0 and out[0, 60] == 1 and out[0, 35] == pytest.approx(0.5)
    assert out[0, 0] == pytest.approx(-0.2) and out[0, 100] == pytest.approx(1.8)
    clipped = percentile_normalize(image, [10], [60], clip=True)
    assert clipped.min() == 0 and clipped.max() == 1


def test_percentile_normalize_per_channel_and_lazy():
    image = da.from_array(np.stack([np.full((4, 4), 10.0), np.full((4, 4), 300.0)]), chunks=2)
    out = percentile_normalize(image, [0, 100], [20, 500])
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute()[:, 0, 0], [0.5, 0.5])


def test_preprocess_normalises_with_the_configured_percentiles(tmp_path):
    # 0..9999 in a shuffled 100x100 image: the 1st and 99.8th percentiles are known
    rng = np.random.default_rng(0)
    data = rng.permutation(np.arange(10000, dtype=np.uint16)).reshape(100, 100)
    write_tiff(tmp_path / "a.tif", data, axes="yx", spacing=(0.5, 0.5))
    result = preprocess_file(tmp_path / "a.tif", tmp_path / "a.ome.zarr", progress=False,
                             pyramid_levels=0)
    lo, hi = np.percentile(np.arange(10000), [1.0, 99.8])
    assert result.low == pytest.approx((lo,)) and result.high == pytest.approx((hi,))
    out = np.asarray(zarr.open_array(str(tmp_path / "a.ome.zarr" / "0"), mode="r"))
    assert out.shape == (1, 100, 100) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], (data - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    image = read_image(tmp_path / "a.ome.zarr")
    assert image.axes == "cyx" and image.spacing == (0.5, 0.5)
    meta = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="r").attrs["unetpipe"]
    assert meta["low"] == [pytest.approx(lo)] and meta["percentiles"] == [1.0, 99.8]


def test_subsample_is_bounded_and_estimates_the_percentiles():
    rng = np.random.default_rng(1)
    full = rng.gamma(2.0, 100.0, size=(1, 40, 256, 256)).astype(np.float32)
    data = da.from_array(full, chunks=(1, 1, 256, 256))  # one chunk per plane, like a TIFF
    sample = subsample_blocks(data, sample_size=200_000, max_chunks=16)
    assert sample.shape[0] == 1 and sample.shape[1] <= 200_000
    for q in (1.0, 50.0, 99.8):
        exact = np.percentile(full, q)
        assert np.percentile(sample, q) == pytest.approx(exact, rel=0.03)


def test_subsample_reads_at_most_max_chunks():
    reads = []

    def counted(block, block_info=None):
        reads.append(block_info[0]["chunk-location"])
        return block

    data = da.ones((1, 50, 32, 32), chunks=(1, 1, 32, 32)).map_blocks(counted, dtype=float)
    subsample_blocks(data, sample_size=10_000, max_chunks=8)
    assert len(reads) == 8 and len(set(reads)) == 8


def test_preprocess_3d_with_labels_channels_and_spacing_override(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 4000, size=(3, 10, 80, 70)).astype(np.uint16)
    labels = np.zeros((10, 80, 70), np.uint16)
    labels[2:6, 10:30, 10:30] = 7
    labels[5:9, 40:60, 30:50] = 300
    write_tiff(tmp_path / "img.tif", image, axes="czyx", spacing=(1.0, 0.2, 0.2))
    write_tiff(tmp_path / "lab.tif", labels, axes="zyx")
    out = tmp_path / "img.ome.zarr"
    result = preprocess_file(tmp_path / "img.tif", out, labels_path=tmp_path / "lab.tif",
                             channels=[2, 0], spacing=[2.0, 0.4, 0.4], chunks=[4, 32, 32],
                             pyramid_levels=1, progress=False)
    assert result.shape == (2, 10, 80, 70) and result.n_labels_max == 300
    stored = read_image(out)
    assert stored.axes == "czyx" and stored.spacing == (2.0, 0.4, 0.4)
    assert stored.data.chunks[1:] == ((4, 4, 2), (32, 32, 16), (32, 32, 6))
    got = stored.data.compute()
    for out_c, in_c in enumerate([2, 0]):
        lo, hi = result.low[out_c], result.high[out_c]
        np.testing.assert_allclose(got[out_c], (image[in_c] - lo) / (hi - lo), rtol=1e-5)
    gt = read_labels(out / "labels" / "gt")
    assert gt.spacing == (2.0, 0.4, 0.4)
    np.testing.assert_array_equal(gt.data.compute(), labels)


def test_signed_or_float_labels_are_stored_unsigned(tmp_path):
    image = np.ones((32, 32), np.uint16)
    image[:16] = 100
    labels = np.zeros((32, 32), np.float32)
    labels[4:10, 4:10] = 3.0
    write_tiff(tmp_path / "i.tif", image, axes="yx")
    write_tiff(tmp_path / "l.tif", labels, axes="yx")
    preprocess_file(tmp_path / "i.tif", tmp_path / "o.ome.zarr", labels_path=tmp_path / "l.tif",
                    progress=False)
    gt = zarr.open_array(str(tmp_path / "o.ome.zarr/labels/gt/0"), mode="r")
    assert gt.dtype == np.uint32 and gt[5, 5] == 3


def test_sparse_image_uses_its_maximum_when_percentiles_coincide(tmp_path, caplog):
    data = np.zeros((512, 512), np.uint16)
    data[10:14, 10:14] = 4000  # 0.006 % of the pixels: p1 = p99.8 = 0
    data[300:302, 40:42] = 2000
    write_tiff(tmp_path / "sparse.tif", data, axes="yx")
    result = preprocess_file(tmp_path / "sparse.tif", tmp_path / "o.ome.zarr", progress=False)
    assert result.low == (0.0,) and result.high == (4000.0,)
    out = np.asarray(zarr.open_array(str(tmp_path / "o.ome.zarr/0"), mode="r"))
    assert out.max() == 1.0 and out[0, 300, 40] == 0.5
    assert "using its maximum (4000) as the high value" in caplog.text


def test_constant_image_becomes_zero_not_huge(tmp_path):
    write_tiff(tmp_path / "flat.tif", np.full((40, 40), 123, np.uint16), axes="yx")
    preprocess_file(tmp_path / "flat.tif", tmp_path / "flat.ome.zarr", progress=False)
    out = np.asarray(zarr.open_array(str(tmp_path / "flat.ome.zarr/0"), mode="r"))
    assert np.all(out == 0)


# --- bad input: one clear message, nothing that looks finished ------------------


def _assert_no_output(tmp_path, name="out.ome.zarr"):
    assert not any(p.startswith(f".{name}") or p == name for p in os.listdir(tmp_path))


def test_nan_found_in_the_statistics_sample(tmp_path):
    data = np.ones((64, 64), np.float32)
    data[::4, ::4] = np.nan
    write_tiff(tmp_path / "nan.tif", data, axes="yx")
    with pytest.raises(InputError, match=r"nan.tif: the image contains NaN or Inf values"):
        preprocess_file(tmp_path / "nan.tif", tmp_path / "out.ome.zarr", progress=False)
    _assert_no_output(tmp_path)


def test_nan_missed_by_the_sample_is_found_while_writing(tmp_path):
    data = np.ones((64, 64), np.float32)
    data[1, 3] = np.nan  # every 4th pixel is sampled (sample_size 1024 of 4096): not this one
    write_tiff(tmp_path / "nan.tif", data, axes="yx")
    with pytest.raises(InputError, match=r"nan.tif: the image contains NaN values$"):
        preprocess_file(tmp_path / "nan.tif", tmp_path / "out.ome.zarr", progress=False,
                        sample_size=1024)
    _assert_no_output(tmp_path)


def test_inf_found_while_writing_a_chunked_stack(tmp_path):
    data = np.ones((40, 64, 64), np.float32)
    data[37, 60, 1] = np.inf
    z = zarr.create_array(str(tmp_path / "inf.zarr"), shape=data.shape, chunks=(4, 32, 32),
                          dtype=np.float32)
    z[:] = data
    # a tiny sample from few chunks misses the bad voxel; the write pass finds it
    with pytest.raises(InputError, match=r"inf.zarr: the image contains (Inf|NaN or Inf)"):
        preprocess_file(tmp_path / "inf.zarr", tmp_path / "out.ome.zarr", progress=False,
                        sample_size=1000, chunks=[8, 32, 32])
    _assert_no_output(tmp_path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((30, 31), np.uint16), "labels have shape (30, 31) but the image"),
        (np.zeros((32, 32), np.uint16), "labels contain no object"),
        (np.full((32, 32), -1, np.int32), "labels contain negative values"),
        (np.full((32, 32), 1.5, np.float32), "labels contain non-integer values"),
    ],
)
def test_bad_labels(tmp_path, labels, message):
    write_tiff(tmp_path / "img.tif", np.ones((32, 32), np.uint16), axes="yx")
    write_tiff(tmp_path / "lab.tif", labels, axes="yx")
    with pytest.raises(InputError) as info:
        preprocess_file(tmp_path / "img.tif", tmp_path / "out.ome.zarr",
                        labels_path=tmp_path / "lab.tif", progress=False)
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "lab.tif"))
    _assert_no_output(tmp_path)


def test_spacing_and_channels_that_do_not_fit(tmp_path):
    write_tiff(tmp_path / "img.tif", np.ones((32, 32), np.uint16), axes="yx")
    with pytest.raises(InputError, match=r"data.spacing \[2.0, 1.0, 1.0\] has 3 values but the image has 2"):
        preprocess_file(tmp_path / "img.tif", tmp_path / "o.ome.zarr", spacing=[2.0, 1.0, 1.0],
                        progress=False)
    with pytest.raises(InputError, match=r"data.channels asks for channel\(s\) \[1\]"):
        preprocess_file(tmp_path / "img.tif", tmp_path / "o.ome.zarr", channels=[0, 1],
                        progress=False)
