"""The separation weight map against a brute-force oracle (the pinned definition)."""

import numpy as np
import pytest
from oracle import weight_map_oracle
from scipy import ndimage as ndi

from unetpipe.inputs.synth import random_nuclei_labels, touching_pairs
from unetpipe.stages.weights import (
    SeparationTargets,
    class_weights,
    influence_radius,
    nearest_two,
    separation_targets,
    separation_weight_map,
    targets_for_mode,
)

W0 = 10.0


def oracle(labels, **kwargs):
    return weight_map_oracle(labels, **kwargs)


def assert_matches_oracle(labels, *, sigma=5.0, spacing=None, w0=W0):
    targets, expected, border = oracle(labels, w0=w0, sigma=sigma, spacing=spacing)
    got = separation_weight_map(labels, w0=w0, sigma=sigma, spacing=spacing)
    assert got.dtype == np.float32 and got.shape == labels.shape
    np.testing.assert_array_equal(separation_targets(labels), targets)
    error = np.abs(got.astype(np.float64) - expected)
    assert error.max() <= 1e-3 * w0
    strong = border >= 0.01 * w0
    if strong.any():
        assert error[strong].max() <= 1e-5
    return border


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_touching_cells_2d(seed):
    labels = random_nuclei_labels((160, 140), rng=seed)
    assert len(touching_pairs(labels)) >= 5
    border = assert_matches_oracle(labels)
    assert border.max() > 0.3 * W0  # the gaps carry a strong border term


@pytest.mark.parametrize("sigma", [2.0, 5.0, 9.0])
def test_random_touching_cells_2d_other_sigmas(sigma):
    assert_matches_oracle(random_nuclei_labels((128, 128), rng=7), sigma=sigma)


def test_random_touching_cells_3d():
    labels = random_nuclei_labels((20, 56, 56), radius=(4, 7), rng=4)
    assert len(touching_pairs(labels)) >= 3
    assert_matches_oracle(labels, sigma=3.0)


def test_random_touching_cells_3d_anisotropic():
    spacing = (2.0, 0.5, 0.5)
    labels = random_nuclei_labels((16, 64, 64), spacing=spacing, radius=(6, 10), rng=5)
    assert len(touching_pairs(labels)) >= 3
    border = assert_matches_oracle(labels, sigma=2.0, spacing=spacing)
    # sigma and the distances are physical: the same labels with isotropic
    # spacing give a different map
    iso = separation_weight_map(labels, sigma=2.0)
    assert np.abs(iso - separation_weight_map(labels, sigma=2.0, spacing=spacing)).max() > 0.1
    assert border.max() > 0.1 * W0


def test_threads_give_identical_results():
    spacing = (1.0, 0.5, 0.5)
    labels = random_nuclei_labels((24, 96, 96), spacing=spacing, rng=6)
    one = separation_weight_map(labels, spacing=spacing, threads=1)
    two = separation_weight_map(labels, spacing=spacing, threads=2)
    np.testing.assert_array_equal(one, two)


# --- edge cases ---------------------------------------------------------------


def test_no_cell():
    labels = np.zeros((20, 30), np.uint16)
    w = separation_weight_map(labels)
    np.testing.assert_array_equal(w, np.ones((20, 30), np.float32))  # a class is absent
    assert not separation_targets(labels).any()


def test_one_cell():
    labels = np.zeros((20, 30), np.int32)
    labels[5:10, 5:12] = 3
    _, expected, border = oracle(labels)
    assert not border.any()
    w = separation_weight_map(labels)
    n, n_fg = labels.size, 35
    np.testing.assert_allclose(w[labels == 3], n / (2 * n_fg))
    np.testing.assert_allclose(w[labels == 0], n / (2 * (n - n_fg)))
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_cells_touching_each_other_at_the_image_border():
    labels = np.zeros((12, 12), np.uint8)
    labels[:, :6] = 1  # both cells fill the image edge to edge
    labels[:, 6:] = 2
    targets = separation_targets(labels)
    assert not targets[:, 5:7].any() and targets[:, :5].all() and targets[:, 7:].all()
    assert_matches_oracle(labels, sigma=2.0)
    # no background at all but the gap: the gap carries the full border term
    w = separation_weight_map(labels, sigma=2.0, class_balance=False)
    d = 1.0 + 2.0  # from column 5: 1 to cell 1 (column 4), 2 to cell 2 (column 7)
    np.testing.assert_allclose(w[:, 5], 1 + W0 * np.exp(-d**2 / 8), rtol=1e-6)


def test_cells_touching_only_diagonally_keep_their_pixels():
    labels = np.zeros((8, 8), np.uint16)
    labels[1:4, 1:4] = 1
    labels[4:7, 4:7] = 2  # corner to corner at (3, 3)-(4, 4)
    targets = separation_targets(labels)
    np.testing.assert_array_equal(targets, (labels != 0).astype(np.uint8))
    w = separation_weight_map(labels, sigma=2.0, class_balance=False)
    # (3, 4) is 1 from each cell: d1 + d2 = 2
    assert w[3, 4] == pytest.approx(1 + W0 * np.exp(-4 / 8))
    assert_matches_oracle(labels, sigma=2.0)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.uint64])
def test_non_consecutive_and_very_large_ids(dtype):
    base = random_nuclei_labels((96, 96), rng=11).astype(np.int64)
    ids = np.unique(base)[1:]
    big = np.zeros(int(base.max()) + 1, np.int64)
    big[ids] = (2**32 - 1) - 7 * np.arange(len(ids))  # huge, sparse, in reverse order
    labels = big[base].astype(dtype)
    assert labels.max() == 2**32 - 1 and len(np.unique(labels)) == len(ids) + 1
    np.testing.assert_array_equal(separation_weight_map(labels), separation_weight_map(base))
    assert_matches_oracle(labels)


def test_cell_split_in_two_pieces_is_one_cell():
    labels = np.zeros((20, 40), np.uint16)
    labels[5:10, 2:8] = 1
    labels[5:10, 30:36] = 1  # same id, far away
    labels[5:10, 17:22] = 2
    w = separation_weight_map(labels, sigma=3.0, class_balance=False)
    # between the left piece and cell 2: distances to the nearest piece of 1
    x = 12
    d1, d2 = x - 7, 17 - x
    assert w[7, x] == pytest.approx(1 + W0 * np.exp(-((d1 + d2) ** 2) / 18), rel=1e-6)
    assert_matches_oracle(labels, sigma=3.0)


@pytest.mark.parametrize("start", [190, 197])
def test_truncation_right_at_the_reach_of_the_border_term(start):
    # two cells across a gap whose d1 + d2 is just inside (190) or just outside
    # (197) R = 18.58 for sigma 5 on a 0.1 grid: a shorter R breaks the first
    labels = np.zeros((3, 260), np.uint16)
    labels[:, 0:10] = 1
    labels[:, start:start + 10] = 2
    spacing = (0.1, 0.1)
    _, expected, border = oracle(labels, sigma=5.0, spacing=spacing)
    got = separation_weight_map(labels, sigma=5.0, spacing=spacing).astype(np.float64)
    assert np.abs(got - expected).max() <= 1e-3 * W0
    above = border >= 1e-3 * W0
    assert above.any() == (start == 190)
    if above.any():  # exact wherever the term reaches the tolerance
        assert np.abs(got - expected)[above].max() <= 1e-5


def test_every_pixel_a_cell_with_ids_near_the_uint32_limit():
    rng = np.random.default_rng(4)
    seeds = rng.integers(0, 48, size=(12, 2))
    yy, xx = np.mgrid[0:48, 0:48]
    nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2,
                        axis=-1)
    labels = (2**32 - 1 - nearest).astype(np.uint32)  # no background at all
    assert labels.min() > 0
    assert_matches_oracle(labels, sigma=3.0)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, bool])
def test_small_dtypes(dtype):
    labels = random_nuclei_labels((64, 64), rng=12)
    labels = (labels > 0) if dtype is bool else (labels % 100).astype(dtype)
    assert_matches_oracle(labels, sigma=3.0)


def test_nearest_two_without_radius_is_exact():
    labels = random_nuclei_labels((48, 48), rng=13)
    d1, d2 = nearest_two(labels)
    ids = [i for i in np.unique(labels) if i]
    stack = np.sort([ndi.distance_transform_edt(labels != i) for i in ids], axis=0)
    np.testing.assert_allclose(d1, stack[0])
    np.testing.assert_allclose(d2, stack[1])


def test_nearest_two_with_no_background_and_huge_ids():
    cells = np.repeat(np.arange(6, dtype=np.uint64), 8)[None, :].repeat(5, axis=0) + 2**40
    d1, d2 = nearest_two(cells, radius=20.0)
    assert np.all(d1 == 0)  # every pixel is in a cell
    # column 7 is the last of the first cell: the next cell starts one pixel on
    np.testing.assert_array_equal(d2[:, 7], 1.0)
    np.testing.assert_array_equal(d2[:, 3], 5.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2D or 3D"):
        separation_weight_map(np.zeros(5, int))
    with pytest.raises(ValueError, match="integers"):
        separation_weight_map(np.zeros((4, 4), float))
    with pytest.raises(ValueError, match="spacing must be 2 positive numbers"):
        separation_weight_map(np.ones((4, 4), int), spacing=(1, 0))
    with pytest.raises(ValueError, match="sigma must be positive"):
        separation_weight_map(np.ones((4, 4), int), sigma=0)
    for sigma in (np.inf, np.nan):
        with pytest.raises(ValueError, match="sigma must be positive and finite"):
            separation_weight_map(np.ones((4, 4), int), sigma=sigma)
    with pytest.raises(ValueError, match="w0 must be >= 0 and finite"):
        separation_weight_map(np.ones((4, 4), int), w0=np.nan)
    negative = np.zeros((8, 8), np.int32)
    negative[1:3, 1:3] = -1
    with pytest.raises(ValueError, match="labels must not be negative"):
        separation_weight_map(negative)
    with pytest.raises(ValueError, match="mode must be one of"):
        targets_for_mode(np.ones((4, 4), int), "four_class")


# --- targets and class balance ------------------------------------------------


def test_class_balance_on_a_hand_made_example():
    labels = np.zeros((4, 4), np.uint8)
    labels[1:3, 1:3] = 5  # 4 cell pixels of 16
    w = separation_weight_map(labels, w0=0)
    np.testing.assert_allclose(w[labels == 5], 16 / (2 * 4))  # 2.0
    np.testing.assert_allclose(w[labels == 0], 16 / (2 * 12))  # 0.666...
    np.testing.assert_allclose(separation_weight_map(labels, w0=0, class_balance=False), 1.0)
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1]), n_classes=2), [2 / 3, 2])


def test_gaps_separate_every_touching_pair():
    for labels in (random_nuclei_labels((200, 200), rng=1),
                   random_nuclei_labels((16, 64, 64), spacing=(2, .5, .5), rng=2)):
        assert len(touching_pairs(labels)) > 3
        targets = separation_targets(labels)
        assert touching_pairs(np.where(targets == 1, labels, 0)) == set()
        # no connected component of the foreground holds two cells
        components, _ = ndi.label(targets)
        for comp_id, box in enumerate(ndi.find_objects(components), start=1):
            ids = np.unique(labels[box][components[box] == comp_id])
            assert len(ids) == 1


def test_three_class_targets_and_weights():
    labels = np.zeros((7, 12), np.uint16)
    labels[1:6, 1:6] = 1
    labels[1:6, 6:11] = 2
    t = targets_for_mode(labels, "three_class")
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 2, 2, 2, 2, 0, 0, 2, 2, 2, 2, 0],
        [0, 2, 1, 1, 2, 0, 0, 2, 1, 1, 2, 0],
        [0, 2, 1, 1, 2, 0, 0, 2, 1, 1, 2, 0],
        [0, 2, 1, 1, 2, 0, 0, 2, 1, 1, 2, 0],
        [0, 2, 2, 2, 2, 0, 0, 2, 2, 2, 2, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(t, expected)
    w = separation_weight_map(labels, mode="three_class", w0=0)
    n, counts = t.size, np.bincount(t.ravel())
    for c in range(3):
        np.testing.assert_allclose(w[t == c], n / (3 * counts[c]))
    # the border term is the same in both modes
    two = separation_weight_map(labels, class_balance=False)
    three = separation_weight_map(labels, class_balance=False, mode="three_class")
    np.testing.assert_array_equal(two, three)


def test_callable_transform():
    labels = random_nuclei_labels((64, 64), rng=3)
    targets, weights = SeparationTargets(mode="three_class", sigma=4.0)(labels)
    np.testing.assert_array_equal(targets, targets_for_mode(labels, "three_class"))
    np.testing.assert_array_equal(
        weights, separation_weight_map(labels, sigma=4.0, mode="three_class"))


def test_influence_radius():
    r = influence_radius(5.0)
    assert W0 * np.exp(-(r**2) / (2 * 25)) == pytest.approx(1e-3 * W0)
