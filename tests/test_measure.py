"""Per-object measurements: hand-computed values in 2D and 3D, chunked stores
against the whole image at once, brute force and scikit-image's regionprops."""

import math

import numpy as np
import pandas as pd
import pytest

from unetpipe.core.errors import InputError
from unetpipe.io.images import read_image, read_labels, write_ome_zarr
from unetpipe.stages.measure import (
    block_measurements,
    combine_measurements,
    measure_store,
    table_columns,
    write_table,
)

UM = "micrometer"


def measure_whole(labels, spacing, intensity=None, probability=None, unit=None):
    part = block_measurements(labels, origin=(0,) * labels.ndim, image_shape=labels.shape,
                              spacing=spacing, intensity=intensity, probability=probability)
    return combine_measurements([part], spacing=spacing, unit=unit)


def measure_blocks(labels, spacing, block, intensity=None, probability=None):
    """The same through blocks of shape ``block`` (which need not divide the shape)."""
    parts = []
    for index in np.ndindex(*[math.ceil(s / b) for s, b in zip(labels.shape, block, strict=True)]):
        region = tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))
        parts.append(block_measurements(
            labels[region], origin=[r.start for r in region], image_shape=labels.shape,
            spacing=spacing,
            intensity=None if intensity is None else intensity[(slice(None), *region)],
            probability=None if probability is None else probability[region]))
    return combine_measurements(parts, spacing=spacing)


# --- a hand-made 2D image ----------------------------------------------------------

def hand_made_2d():
    labels = np.zeros((12, 16), dtype=np.uint32)
    image = np.zeros((1, 12, 16), dtype=np.float32)
    prob = np.zeros((12, 16))
    # 1: filled rectangle, rows 2-4, columns 3-7
    labels[2:5, 3:8] = 1
    image[0, 2:5, 3:8] = np.arange(1, 16).reshape(3, 5)
    prob[2:5, 3:8] = 0.9
    # 2: an L, a bar down column 1 (rows 6-9) and a foot along row 9 (columns 1-3)
    ell = [(6, 1), (7, 1), (8, 1), (9, 1), (9, 2), (9, 3)]
    for (y, x), p in zip(ell, [0.2, 0.4, 0.6, 0.8, 1.0, 0.0], strict=True):
        labels[y, x] = 2
        image[0, y, x] = 2.5
        prob[y, x] = p
    # 3: a 2x2 square in the top right corner (touches the border)
    labels[0:2, 14:16] = 3
    image[0, 0:2, 14:16] = [[1, 2], [3, 10]]
    prob[0:2, 14:16] = 0.75
    # 7: one pixel on the bottom row (touches the border)
    labels[11, 8] = 7
    image[0, 11, 8] = 0.5
    prob[11, 8] = 0.1
    return labels, image, prob


def ecc(var_y, var_x, cov):
    half_sum, half_diff = (var_y + var_x) / 2, (var_y - var_x) / 2
    root = math.sqrt(half_diff ** 2 + cov ** 2)
    return math.sqrt(1 - (half_sum - root) / (half_sum + root))


# spacing (0.5, 2.0): a pixel is 1 square micrometre
EXPECTED_2D = pd.DataFrame(
    [
        # label, centroid y x, bbox min y x, bbox max y x, area, eq. diameter,
        # mean/max intensity, mean probability, solidity, eccentricity, border, chunks
        (1, 1.5, 10.0, 1.0, 6.0, 2.5, 16.0, 15.0, 2 * math.sqrt(15 / math.pi), 8.0, 15.0, 0.9,
         1.0, ecc(2 / 3 * 0.25, 2 * 4.0, 0.0), False, 1),
        # L: index variances 4/3 (y), 7/12 (x), covariance 1/2; hull 9 pixels (a 4x3
        # box less the triangle (5.5,1.5), (5.5,3.5), (8.5,3.5) of area 3)
        (2, 4.0, 3.0, 3.0, 2.0, 5.0, 8.0, 6.0, 2 * math.sqrt(6 / math.pi), 2.5, 2.5, 0.5,
         6 / 9, ecc(4 / 3 * 0.25, 7 / 12 * 4.0, 0.5 * 0.5 * 2.0), False, 1),
        (3, 0.25, 29.0, 0.0, 28.0, 1.0, 32.0, 4.0, 2 * math.sqrt(4 / math.pi), 4.0, 10.0, 0.75,
         1.0, math.sqrt(1 - 0.0625 / 1.0), True, 1),
        (7, 5.5, 16.0, 5.5, 16.0, 6.0, 18.0, 1.0, 2 * math.sqrt(1 / math.pi), 0.5, 0.5, 0.1,
         1.0, 0.0, True, 1),
    ],
    columns=table_columns(2, channels=1, probability=True),
)


def assert_table(actual, expected, *, rtol=1e-12, skip=()):
    """Same columns and values; labels, flags and counts exactly.

    Eccentricity is compared with an absolute 1e-7 besides: near 0 (a
    symmetric object) it is the square root of a difference of variances, so
    rounding at 1e-16 in the variances becomes 1e-8 in it.
    """
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    for col in expected.columns:
        if col in skip:
            continue
        a, e = actual[col].to_numpy(), expected[col].to_numpy()
        if col in ("label", "touches_border", "n_chunks"):
            np.testing.assert_array_equal(a, e, err_msg=col)
        else:
            atol = 1e-7 if col == "eccentricity" else 1e-12
            np.testing.assert_allclose(a.astype(float), e.astype(float), rtol=rtol, atol=atol,
                                       err_msg=col)


def test_hand_made_2d():
    labels, image, prob = hand_made_2d()
    table = measure_whole(labels, (0.5, 2.0), image, prob, unit=UM)
    assert_table(table, EXPECTED_2D)
    assert table["label"].dtype == np.uint64 and table["touches_border"].dtype == bool
    assert table["solidity"].iloc[0] == 1.0  # exactly, for a filled rectangle
    assert table.attrs["unit"] == UM


def test_hand_made_2d_in_blocks():
    labels, image, prob = hand_made_2d()
    table = measure_blocks(labels, (0.5, 2.0), (5, 6), image, prob)
    expected = EXPECTED_2D.copy()
    # rectangle: rows 0-4 / 5-9, columns 0-5 / 6-11 -> blocks (0,0), (0,1)
    # L: rows 6-9, columns 1-3 -> block (1,0); square: (0,2); pixel (11,8): (2,1)
    expected["n_chunks"] = [2, 1, 1, 1]
    assert_table(table, expected)


def test_partial_rows_of_a_block():
    labels, image, prob = hand_made_2d()
    part = block_measurements(labels[:5, :6], origin=(0, 0), image_shape=labels.shape,
                              spacing=(0.5, 2.0), intensity=image[:, :5, :6],
                              probability=prob[:5, :6])
    row = part.iloc[0]
    # the rectangle's left part: rows 2-4, columns 3-5
    assert (row["label"], row["count"]) == (1, 9)
    assert (row["min_y"], row["max_y"], row["min_x"], row["max_x"]) == (2, 4, 3, 5)
    assert (row["sum_y"], row["sum_x"]) == (9 * 3, 9 * 4)  # index sums, exact
    assert row["m2_yy"] == pytest.approx(6 * 0.25) and row["m2_xx"] == pytest.approx(6 * 4)
    assert row["m2_yx"] == pytest.approx(0)
    assert row["intensity_sum_0"] == pytest.approx(1 + 2 + 3 + 6 + 7 + 8 + 11 + 12 + 13)
    assert row["intensity_max_0"] == 13
    assert row["probability_sum"] == pytest.approx(8.1)
    hull = {tuple(v) for v in row["hull"]}  # pixel corners, index units
    assert hull == {(1.5, 2.5), (1.5, 5.5), (4.5, 2.5), (4.5, 5.5)}
    assert not row["touches_border"] and row["n_chunks"] == 1


def test_several_channels_and_no_optional_inputs():
    labels, image, _ = hand_made_2d()
    two = np.stack([image[0], 10 - image[0]])
    table = measure_whole(labels, (1.0, 1.0), two)
    assert list(table.columns[7:13]) == ["area", "equivalent_diameter", "mean_intensity_0",
                                         "max_intensity_0", "mean_intensity_1",
                                         "max_intensity_1"]
    np.testing.assert_allclose(table["mean_intensity_1"], [2.0, 7.5, 6.0, 9.5])
    np.testing.assert_allclose(table["max_intensity_1"], [9.0, 7.5, 9.0, 9.5])
    assert "mean_probability" not in table.columns
    bare = measure_whole(labels, (1.0, 1.0))
    assert list(bare.columns) == table_columns(2)
    assert "mean_intensity" not in bare.columns


# --- 3D ---------------------------------------------------------------------------------

def test_hand_made_3d_box():
    labels = np.zeros((6, 8, 10), dtype=np.uint64)
    labels[1:4, 2:6, 3:9] = 5  # 3 x 4 x 6 voxels
    labels[5, 0:2, 4] = 2 ** 40  # on the last plane and the first row
    spacing = (2.0, 0.5, 0.25)  # a voxel is 0.25 cubic micrometres
    for table in (measure_whole(labels, spacing, unit=UM),
                  measure_blocks(labels, spacing, (4, 3, 4))):
        assert list(table.columns) == [
            "label", "centroid_z", "centroid_y", "centroid_x", "bbox_min_z", "bbox_min_y",
            "bbox_min_x", "bbox_max_z", "bbox_max_y", "bbox_max_x", "volume",
            "equivalent_diameter", "touches_border", "n_chunks"]
        assert table["label"].tolist() == [5, 2 ** 40]
        box = table.iloc[0]
        np.testing.assert_allclose(
            box[["centroid_z", "centroid_y", "centroid_x"]].astype(float), [4.0, 1.75, 1.375])
        np.testing.assert_allclose(
            box[["bbox_min_z", "bbox_min_y", "bbox_min_x", "bbox_max_z", "bbox_max_y",
                 "bbox_max_x"]].astype(float), [2.0, 1.0, 0.75, 8.0, 3.0, 2.25])
        assert box["volume"] == pytest.approx(18.0)
        assert box["equivalent_diameter"] == pytest.approx((6 * 18 / math.pi) ** (1 / 3))
        assert table["touches_border"].tolist() == [False, True]
        assert table["volume"].iloc[1] == pytest.approx(0.5)
    # blocks of 4 x 3 x 4: z 1-3 -> 1 block, y 2-5 -> 2, x 3-8 -> 3
    assert table["n_chunks"].tolist() == [6, 1]


# --- stores: chunked against whole ------------------------------------------------------

def random_labels(shape, n, distance, seed):
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.uint32)
    points = tuple(rng.integers(0, s, n) for s in shape)
    # sparse, large ids
    seeds[points] = rng.choice(np.arange(1, 4_000_000_000, 7919, dtype=np.uint32), n,
                               replace=False)
    return expand_labels(seeds, distance=distance).astype(np.uint32)


def write_stores(tmp_path, labels, spacing, chunks, rng, channels=2):
    ndim = labels.ndim
    axes = "zyx"[-ndim:]
    image = rng.normal(size=(channels, *labels.shape)).astype(np.float32)
    logits = rng.normal(size=(3, *labels.shape))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float16)
    lpath = write_ome_zarr(tmp_path / "labels.ome.zarr", labels, axes=axes, spacing=spacing,
                           unit=UM, chunks=chunks)
    ipath = write_ome_zarr(tmp_path / "image.ome.zarr", image, axes="c" + axes,
                           spacing=spacing, unit=UM, chunks=[c + 3 for c in chunks])
    ppath = write_ome_zarr(tmp_path / "probabilities.ome.zarr", probs, axes="c" + axes,
                           spacing=spacing, unit=UM, chunks=[2 * c for c in chunks])
    return lpath, ipath, ppath, image, 1.0 - probs[0].astype(np.float64)


def chunk_counts(labels, chunks):
    """Number of chunks each label has pixels in, by brute force."""
    out = {}
    for lab in np.unique(labels[labels > 0]):
        where = np.nonzero(labels == lab)
        cells = {tuple(int(i) // c for i, c in zip(p, chunks, strict=True))
                 for p in zip(*where, strict=True)}
        out[int(lab)] = len(cells)
    return out


def test_store_2d_chunked_equals_whole(tmp_path):
    from skimage.measure import regionprops

    rng = np.random.default_rng(3)
    labels = random_labels((61, 75), 14, 9, seed=1)
    spacing, chunks = (0.7, 0.7), (16, 20)  # the chunks do not divide the shape
    lpath, ipath, ppath, image, prob = write_stores(tmp_path, labels, spacing, chunks, rng)
    lab = read_labels(lpath)
    assert lab.spacing == spacing and lab.unit == UM and lab.data.chunks[1][0] == 20
    assert read_image(ipath).axes == "cyx"

    table = measure_store(lpath, image_path=ipath, probabilities_path=ppath, threads=2)
    whole = measure_whole(labels, spacing, image, prob, unit=UM)
    assert_table(table, whole, rtol=1e-9, skip=("n_chunks",))
    # exact sums and exact hulls: these agree bit for bit
    exact = [c for c in table.columns if c.startswith(("centroid", "bbox"))]
    for col in [*exact, "area", "equivalent_diameter", "solidity"]:
        np.testing.assert_array_equal(table[col], whole[col], err_msg=col)
    assert (whole["n_chunks"] == 1).all()
    counts = chunk_counts(labels, chunks)
    assert table["n_chunks"].tolist() == [counts[int(i)] for i in table["label"]]
    assert table["n_chunks"].max() >= 3

    # brute force, and scikit-image for what it defines the same way
    ids, dense = np.unique(labels, return_inverse=True)  # regionprops wants small ids
    props = {int(ids[p.label]): p for p in regionprops(dense.reshape(labels.shape),
                                                       spacing=spacing)}
    assert sorted(props) == table["label"].tolist()
    for row in table.itertuples():
        mask = labels == row.label
        ys, xs = np.nonzero(mask)
        assert row.centroid_y == pytest.approx(ys.mean() * 0.7, rel=1e-12)
        assert row.centroid_x == pytest.approx(xs.mean() * 0.7, rel=1e-12)
        assert row.bbox_max_x == pytest.approx((xs.max() + 1) * 0.7)
        assert row.area == pytest.approx(mask.sum() * 0.49)
        assert row.mean_intensity_1 == pytest.approx(image[1][mask].astype(float).mean())
        assert row.max_intensity_0 == image[0][mask].max()
        assert row.mean_probability == pytest.approx(prob[mask].mean())
        assert row.touches_border == bool(ys.min() == 0 or xs.min() == 0 or ys.max() == 60
                                          or xs.max() == 74)
        p = props[row.label]
        assert row.eccentricity == pytest.approx(p.eccentricity, abs=1e-6)
        np.testing.assert_allclose([row.centroid_y, row.centroid_x], p.centroid, rtol=1e-9)
        assert row.area == pytest.approx(p.area)
        # our hull is that of the pixel squares, regionprops' of pixel centres: ours is larger
        assert 0 < row.solidity <= 1


def test_store_3d_chunked_equals_whole(tmp_path):
    rng = np.random.default_rng(4)
    labels = random_labels((13, 22, 19), 9, 5, seed=2)
    spacing, chunks = (2.0, 0.5, 0.5), (4, 6, 5)
    lpath, ipath, ppath, image, prob = write_stores(tmp_path, labels, spacing, chunks, rng,
                                                    channels=1)
    table = measure_store(lpath, image_path=ipath, probabilities_path=ppath, threads=2)
    whole = measure_whole(labels, spacing, image, prob, unit=UM)
    assert "mean_intensity" in table.columns and "solidity" not in table.columns
    assert_table(table, whole, rtol=1e-9, skip=("n_chunks",))
    counts = chunk_counts(labels, chunks)
    assert table["n_chunks"].tolist() == [counts[int(i)] for i in table["label"]]
    assert table["n_chunks"].max() >= 3


def test_store_single_channel_image_without_channel_axis(tmp_path):
    labels, image, _ = hand_made_2d()
    lpath = write_ome_zarr(tmp_path / "l.ome.zarr", labels, axes="yx", spacing=(0.5, 2.0),
                           unit=UM, chunks=(5, 6))
    ipath = write_ome_zarr(tmp_path / "i.ome.zarr", image[0], axes="yx", spacing=(0.5, 2.0),
                           unit=UM, chunks=(7, 7))
    table = measure_store(lpath, image_path=ipath)
    expected = EXPECTED_2D.drop(columns="mean_probability")
    expected["n_chunks"] = [2, 1, 1, 1]
    assert_table(table, expected)


def test_empty_labels_give_header_only(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 30), dtype=np.uint32)
    lpath, ipath, ppath, _, _ = write_stores(tmp_path, labels, (1.0, 1.0), (8, 8), rng,
                                             channels=1)
    table = measure_store(lpath, image_path=ipath, probabilities_path=ppath)
    assert len(table) == 0
    assert list(table.columns) == table_columns(2, channels=1, probability=True)
    out = write_table(table, tmp_path / "empty.csv")
    assert out.read_text() == ",".join(table.columns) + "\n"


def test_shape_mismatch_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    labels = random_labels((20, 30), 3, 4, seed=0)
    lpath, ipath, _, _, _ = write_stores(tmp_path, labels, (1.0, 1.0), (8, 8), rng)
    other = write_ome_zarr(tmp_path / "other.ome.zarr", np.zeros((1, 20, 31), np.float32),
                           axes="cyx", spacing=(1.0, 1.0), unit=UM)
    with pytest.raises(InputError, match=r"other\.ome\.zarr") as err:
        measure_store(lpath, image_path=other)
    assert err.value.path == str(other) and "(20, 31)" in str(err.value)
    with pytest.raises(InputError, match=r"other\.ome\.zarr"):
        measure_store(lpath, image_path=ipath, probabilities_path=other)


def test_write_table_full_precision_and_atomic(tmp_path):
    labels = np.zeros((3, 3), dtype=np.uint32)
    labels[1, 1] = 4
    table = measure_whole(labels, (123456.789012345678, 1 / 3), unit=UM)
    path = tmp_path / "out" / "table.csv"
    write_table(table, path)
    write_table(table, path)  # replaces
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]
    back = pd.read_csv(path)
    assert list(back.columns) == list(table.columns)
    assert back["centroid_y"][0] == table["centroid_y"][0] == 123456.789012345678
    assert back["centroid_x"][0] == 1 / 3
    pd.testing.assert_frame_equal(back, table, check_dtype=False, check_exact=True)
