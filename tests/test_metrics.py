"""AP at an IoU threshold, the touching-pair split count, and the evaluation
scores (optimal matching, PQ, SEG): against brute force and hand-made cases."""

import numpy as np
import pytest

from unetpipe.stages.metrics import (
    DEFAULT_THRESHOLDS,
    average_precision,
    match,
    overlap_table,
    pool_scores,
    score,
    split_pairs,
)


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


# --- score: optimal matching over thresholds, PQ, SEG ---------------------------------


def test_thresholds_are_050_to_095():
    assert DEFAULT_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_shifted_square_has_a_known_iou_at_every_threshold():
    gt = np.zeros((20, 20), int)
    pred = np.zeros((20, 20), int)
    gt[5:15, 5:15] = 1
    pred[5:15, 7:17] = 9  # 80 shared pixels, 120 in the union: IoU 2/3
    s = score(gt, pred)
    assert [s.counts(t)[0] for t in DEFAULT_THRESHOLDS] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert s.counts(0.7) == (0, 1, 1) and s.ap(0.7) == 0.0
    assert s.mean_ap == pytest.approx(0.4)
    assert s.mean_matched_iou == pytest.approx(2 / 3)
    assert s.panoptic_quality == pytest.approx(2 / 3)
    assert s.seg == pytest.approx(2 / 3)  # 80 of 100 pixels: covered more than half


def test_empty_prediction_and_empty_ground_truth():
    gt = np.zeros((8, 8), int)
    gt[1:3, 1:3], gt[5:7, 5:7] = 1, 2
    empty = np.zeros_like(gt)
    s = score(gt, empty)
    assert s.counts() == (0, 0, 2) and s.ap() == 0 and s.f1() == 0
    assert s.precision() == 0 and s.recall() == 0 and s.panoptic_quality == 0 and s.seg == 0
    s = score(empty, gt)
    assert s.counts() == (0, 2, 0) and s.ap() == 0 and s.recall() == 0
    assert np.isnan(s.seg) and s.to_dict()["seg"] is None
    s = score(empty, empty)
    assert s.counts() == (0, 0, 0) and s.ap() == 1 and s.f1() == 1 and s.mean_ap == 1
    assert s.panoptic_quality == 1 and s.precision() == 1 and s.recall() == 1


def test_one_object_split_in_two_matches_once_at_most():
    gt = np.zeros((6, 6), int)
    gt[1:5, 1:5] = 3  # 16 pixels
    pred = np.zeros_like(gt)
    pred[1:5, 1:3], pred[1:5, 3:5] = 1, 2  # two halves, IoU exactly 0.5 each
    s = score(gt, pred)
    # IoU >= 0.5 makes both halves candidates; one-to-one keeps one of them
    assert s.counts(0.5) == (1, 1, 0) and s.counts(0.55) == (0, 2, 1)
    assert s.mean_matched_iou == pytest.approx(0.5)
    assert s.panoptic_quality == pytest.approx(0.5 / 1.5)
    assert s.seg == 0  # no half covers *more* than half of the cell


def test_two_objects_merged_into_one():
    gt = np.zeros((6, 6), int)
    gt[1:5, 1:3], gt[1:5, 3:5] = 1, 2
    pred = np.zeros_like(gt)
    pred[1:5, 1:5] = 7
    s = score(gt, pred)
    assert s.counts(0.5) == (1, 0, 1) and s.ap(0.5) == 0.5 and s.f1(0.5) == pytest.approx(2 / 3)
    assert s.seg == pytest.approx(0.5)  # the merged object covers each cell whole: J = 0.5


def test_assignment_maximises_the_matched_iou():
    # along one row: g1 = 0..5, g2 = 6..9; p1 = 0..2, p2 = 3..7, p3 = 8..9
    gt = np.array([[1] * 6 + [2] * 4])
    pred = np.array([[1] * 3 + [2] * 5 + [3] * 2])
    s = score(gt, pred, thresholds=[0.28])
    # candidates: p1-g1 .5, p2-g1 .375, p2-g2 .286, p3-g2 .5; best: p1-g1 and p3-g2
    assert s.counts(0.28) == (2, 1, 0)
    assert s.mean_matched_iou == pytest.approx(0.5)


def test_seg_on_a_hand_made_case():
    gt = np.zeros((10, 10), int)
    pred = np.zeros((10, 10), int)
    gt[0, 0:10] = 1          # R1: 10 pixels
    pred[0, 2:10] = 5        # S1 covers 8 of R1 ...
    pred[1, 0:2] = 5         # ... plus 2 background pixels: J = 8 / 12
    gt[3, 0:6] = 2           # R2: 6 pixels
    pred[3, 0:3] = 6         # covers exactly half: not more, so J = 0
    gt[5, 0:4] = 3           # R3: 4 pixels
    pred[5, 0:8] = 7         # covers all of R3 and 4 more: J = 4 / 8
    s = score(gt, pred)
    assert s.seg == pytest.approx((8 / 12 + 0 + 0.5) / 3)


def test_pooled_scores_equal_the_images_side_by_side():
    rng = np.random.default_rng(0)

    def random_labels(shift):
        lab = np.zeros((30, 30), int)
        for i in range(1, 6):
            y, x = rng.integers(0, 24, 2)
            lab[y:y + 6, x + shift:x + shift + 5] = i
        return lab

    pairs = [(random_labels(0), random_labels(1)) for _ in range(3)]
    pooled = pool_scores(score(g, p) for g, p in pairs)
    offset = 100
    gt = np.concatenate([np.where(g > 0, g + k * offset, 0) for k, (g, _) in enumerate(pairs)], 1)
    pred = np.concatenate([np.where(p > 0, p + k * offset, 0) for k, (_, p) in enumerate(pairs)],
                          1)
    whole = score(gt, pred)
    assert pooled.images == 3
    assert pooled.tp == whole.tp and pooled.n_true == whole.n_true
    assert pooled.n_pred == whole.n_pred
    assert pooled.panoptic_quality == pytest.approx(whole.panoptic_quality)
    assert pooled.seg == pytest.approx(whole.seg) and pooled.mean_ap == pytest.approx(whole.mean_ap)
    d = pooled.to_dict()
    assert len(d["per_threshold"]) == 10 and d["per_threshold"][0]["iou_threshold"] == 0.5


def test_score_refuses_bad_thresholds_and_shapes():
    with pytest.raises(ValueError, match="thresholds"):
        score(np.zeros((2, 2), int), np.zeros((2, 2), int), thresholds=[0])
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_score_matches_an_exhaustive_search_over_one_to_one_matchings():
    import itertools

    rng = np.random.default_rng(3)
    for _ in range(60):
        gt = rng.integers(0, 5, (5, 5))
        pred = rng.integers(0, 6, (5, 5))
        g_ids = [int(i) for i in np.unique(gt) if i]
        p_ids = [int(i) for i in np.unique(pred) if i]
        iou = {(g, p): ((gt == g) & (pred == p)).sum() / ((gt == g) | (pred == p)).sum()
               for g in g_ids for p in p_ids}
        for t in (0.05, 0.1, 0.2, 0.3):
            best = (0, 0.0)
            # every injective map of true objects to predicted ones (or to nothing)
            for chosen in itertools.product([None, *p_ids], repeat=len(g_ids)):
                used = [p for p in chosen if p is not None]
                if len(used) != len(set(used)):
                    continue
                pairs = [(g, p) for g, p in zip(g_ids, chosen, strict=True)
                         if p is not None and iou[g, p] >= t]
                value = (len(pairs), round(sum(iou[q] for q in pairs), 9))
                best = max(best, value)
            s = score(gt, pred, thresholds=[t])
            assert s.tp[0] == best[0]
            assert s.iou_sum == pytest.approx(best[1])


def test_assignment_prefers_more_matches_to_a_larger_iou_sum():
    from unetpipe.stages.metrics import _assign

    # a chain p0 - g1 - p1 - g2 - p2 - g3: two good matches (g1-p1, g2-p2) or
    # three poor ones (g1-p0, g2-p1, g3-p2); the count comes first
    gi = np.array([1, 1, 2, 2, 3])
    pi = np.array([0, 1, 1, 2, 2]) + 10
    iou = np.array([0.05, 0.95, 0.05, 0.95, 0.05])
    chosen = _assign(gi, pi, iou, 0.01)
    assert sorted(chosen.tolist()) == [0, 2, 4]
    assert sorted(_assign(gi, pi, iou, 0.5).tolist()) == [1, 3]


# --- the overlap table: score_overlaps, overlap_counts, Scores to and from dicts ---------


def brute_force_table(gt, pred):
    """Pair intersections and object sizes, one boolean mask at a time."""
    pairs = {}
    for g in (int(i) for i in np.unique(gt) if i):
        for p in (int(j) for j in np.unique(pred) if j):
            n = int(((gt == g) & (pred == p)).sum())
            if n:
                pairs[g, p] = n
    sizes = [{int(i): int((a == i).sum()) for i in np.unique(a) if i} for a in (gt, pred)]
    return pairs, *sizes


def as_dicts(overlaps):
    gi, pi, inter, (g_ids, g_n), (p_ids, p_n) = overlaps
    pairs = {(int(g), int(p)): int(n) for g, p, n in zip(gi, pi, inter, strict=True)}
    return (pairs, dict(zip(g_ids.tolist(), g_n.tolist(), strict=True)),
            dict(zip(p_ids.tolist(), p_n.tolist(), strict=True)))


@pytest.mark.parametrize("ids", [(9, 7), (120, 90)])  # pairs counted by bincount / by sort
@pytest.mark.parametrize("chunks", [(5, 7), (13, 4), (30, 30), (1, 30)])
def test_overlap_counts_chunk_by_chunk_against_brute_force(chunks, ids):
    import dask.array as da

    from unetpipe.stages.metrics import overlap_counts

    rng = np.random.default_rng(sum(chunks))
    gt = rng.integers(0, ids[0], (30, 30)) * (rng.random((30, 30)) < 0.8)
    pred = rng.integers(0, ids[1], (30, 30)) * 11
    out = overlap_counts(da.from_array(gt, chunks=chunks), da.from_array(pred, chunks=(8, 8)),
                         split_every=3)
    assert as_dicts(out) == brute_force_table(gt, pred)
    # sorted by ground-truth id, then predicted id, without background
    assert np.all(np.diff(out.gt_ids.astype(float) * 1000 + out.pred_ids) > 0)
    assert out.gt_ids.dtype == out.gt_sizes[0].dtype == np.uint64


def test_overlap_counts_takes_uint64_ids_beyond_int64_and_checks_shapes():
    import dask.array as da

    from unetpipe.stages.metrics import overlap_counts

    gt = np.array([[1, 1, 0, 2]], np.uint64) * np.uint64(2**62)
    pred = np.array([[0, 3, 3, 3]], np.uint64) + np.uint64(2**64 - 4)
    pred[0, 0] = 0
    out = overlap_counts(da.from_array(gt, chunks=(1, 3)), pred)
    assert as_dicts(out) == ({(2**62, 2**64 - 1): 1, (2**63, 2**64 - 1): 1},
                             {2**62: 2, 2**63: 1}, {2**64 - 1: 3})
    with pytest.raises(ValueError, match=r"\(2, 3\) vs \(3, 2\)"):
        overlap_counts(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="negative"):
        overlap_counts(np.array([[-1, 1]]), np.array([[1, 1]]))


@pytest.mark.parametrize("seed", range(4))
def test_score_on_dask_arrays_equals_score_on_numpy(seed):
    import dask.array as da
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    shape = (6, 20, 24) if seed % 2 else (37, 41)
    gt = label(rng.random(shape) > 0.55)
    pred = label(np.where(rng.random(shape) < 0.1, 0, gt) > 0) * 5
    expected = score(gt, pred)
    chunks = tuple(int(c) for c in rng.integers(2, 12, len(shape)))
    got = score(da.from_array(gt, chunks=chunks), da.from_array(pred, chunks=chunks[::-1]))
    assert got == expected  # exactly: the same pairs, summed in the same order
    assert score(da.from_array(gt, chunks=chunks), pred) == expected


def test_score_overlaps_takes_a_mapping_or_arrays_and_counts_lonely_objects():
    from unetpipe.stages.metrics import score_overlaps

    gt = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 0]])
    pred = np.array([[5, 5, 5, 0, 0, 0, 0, 8, 8]])
    expected = score(gt, pred)
    # gt 2 and pred 8 overlap nothing: they are only in the sizes
    by_map = score_overlaps([1], [5], [3], {1: 4, 2: 2}, {5: 3, 8: 2})
    by_arrays = score_overlaps(np.array([1]), np.array([5]), np.array([3]),
                               (np.array([2, 1]), np.array([2, 4])), ([5, 8], [3, 2]))
    assert by_map == by_arrays == expected
    assert expected.counts(0.5) == (1, 1, 1)
    # repeated pairs and ids add up (tables of two halves of an image); 0 is background
    halves = score_overlaps([1, 1, 0], [5, 5, 5], [2, 1, 9], ([1, 2, 1, 0], [3, 2, 1, 50]),
                            ([5, 8, 5], [1, 2, 2]))
    assert halves == expected
    with pytest.raises(ValueError, match="no size"):
        score_overlaps([1], [5], [3], {2: 2}, {5: 3})
    with pytest.raises(ValueError, match="larger"):
        score_overlaps([1], [5], [4], {1: 4}, {5: 3})
    with pytest.raises(ValueError, match="length"):
        score_overlaps([1, 2], [5], [3], {1: 4}, {5: 3})
    with pytest.raises(ValueError, match="negative"):
        score_overlaps([-1], [5], [3], {1: 4}, {5: 3})
    with pytest.raises(ValueError, match="thresholds"):
        score_overlaps([], [], [], {}, {}, thresholds=[1.5])
    nothing = score_overlaps([], [], [], {}, {})
    assert nothing == score(np.zeros((2, 2), int), np.zeros((2, 2), int))


def test_scores_round_trip_through_json_and_pool_from_dicts():
    import json

    from unetpipe.stages.metrics import Scores

    rng = np.random.default_rng(5)
    scores = []
    for _ in range(3):
        gt = rng.integers(0, 6, (9, 9))
        scores.append(score(gt, np.where(rng.random(gt.shape) < 0.2, 0, gt)))
    scores.append(score(np.zeros((3, 3), int), np.ones((3, 3), int)))  # SEG undefined
    for s in [*scores, pool_scores(scores)]:
        d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
        assert d["thresholds"] == list(DEFAULT_THRESHOLDS)
        assert d["iou_sum"] == s.iou_sum and d["seg_sum"] == s.seg_sum
        assert Scores.from_dict(d) == s
    dicts = [json.loads(json.dumps(s.to_dict())) for s in scores]
    pooled = pool_scores(Scores.from_dict(d) for d in dicts)
    assert pooled == pool_scores(scores) and pooled.images == 4
    assert pooled.to_dict() == pool_scores(scores).to_dict()
    custom = score(np.ones((2, 2), int), np.ones((2, 2), int), thresholds=[0.3, 0.9])
    assert Scores.from_dict(custom.to_dict()) == custom
    broken = scores[0].to_dict()
    del broken["iou_sum"]
    with pytest.raises(ValueError, match="iou_sum"):
        Scores.from_dict(broken)
    broken = scores[0].to_dict()
    broken["per_threshold"][3]["fp"] += 1
    with pytest.raises(ValueError, match="contradict"):
        Scores.from_dict(broken)
