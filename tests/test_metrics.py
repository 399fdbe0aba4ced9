"""AP at an IoU threshold and the touching-pair split count, against brute force."""

import numpy as np
import pytest

from unetpipe.metrics import average_precision, match, overlap_table, split_pairs


def brute_force_match(gt, pred, threshold):
    """Every pair's IoU from boolean masks; greedy matching (unique above 0.5)."""
    tp = 0
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    for i in g_ids:
        for j in p_ids:
            a, b = gt == i, pred == j
            iou = (a & b).sum() / (a | b).sum()
            if iou > threshold:
                tp += 1
    return tp, len(p_ids) - tp, len(g_ids) - tp


def test_literal_example():
    gt = np.array([[1, 1, 1, 0, 2, 2, 0, 3]])
    pred = np.array([[5, 5, 0, 0, 7, 7, 7, 0]])
    # 1 vs 5: IoU 2/3 (match); 2 vs 7: IoU 2/3 (match); 3 missed
    m = match(gt, pred)
    assert (m.tp, m.fp, m.fn) == (2, 0, 1)
    assert m.ap == pytest.approx(2 / 3)
    assert m.mean_matched_iou == pytest.approx(2 / 3)
    # at 0.7 nothing matches
    m = match(gt, pred, threshold=0.7)
    assert (m.tp, m.fp, m.fn) == (0, 2, 3)
    assert m.ap == 0


def test_iou_exactly_half_does_not_match():
    gt = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 0]])  # IoU 1/2
    assert match(gt, pred).tp == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_labels_against_brute_force(seed):
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    gt = label(rng.random((40, 40)) > 0.55)
    # a prediction: the truth with pixels flipped and some ids merged
    noisy = np.where(rng.random(gt.shape) < 0.1, 0, gt)
    pred = label(noisy > 0) * 3  # non-consecutive ids
    for threshold in (0.5, 0.75):
        m = match(gt, pred, threshold=threshold)
        assert (m.tp, m.fp, m.fn) == brute_force_match(gt, pred, threshold)


def test_overlap_table_values():
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[3, 4, 4, 0]])
    gi, pi, inter, iou = overlap_table(gt, pred)
    table = {(int(a), int(b)): (int(n), float(v))
             for a, b, n, v in zip(gi, pi, inter, iou, strict=True)}
    assert table == {(1, 3): (1, 0.5), (1, 4): (1, 1 / 3), (2, 4): (1, 1 / 3)}


def test_empty_images():
    z = np.zeros((5, 5), int)
    assert average_precision(z, z) == 1.0
    one = z.copy()
    one[1:3, 1:3] = 1
    assert average_precision(one, z) == 0.0
    assert average_precision(z, one) == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        match(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="threshold"):
        match(np.zeros((3, 3), int), np.zeros((3, 3), int), threshold=0.3)


def test_split_pairs():
    gt = np.array([[1, 1, 1, 2, 2, 2, 0, 3, 3, 4, 4, 0, 5, 5, 6, 6]])
    pred = np.array([[1, 1, 0, 2, 2, 2, 0, 7, 7, 7, 7, 0, 8, 8, 0, 0]])
    # (1, 2) split; (3, 4) merged into one object; (5, 6): 6 is missed
    out = split_pairs(gt, pred, [(1, 2), (3, 4), (5, 6)])
    assert out.tolist() == [True, False, False]
