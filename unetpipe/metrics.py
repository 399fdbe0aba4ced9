"""Instance segmentation scores: matching by intersection over union.

The score used during training and in the ablation is the "average
precision" of the instance segmentation challenges (Data Science Bowl 2018,
Cellpose, StarDist): at an IoU threshold t, a predicted object and a
ground-truth object match when their IoU exceeds t, and

    AP(t) = TP / (TP + FP + FN).

For t >= 0.5 an object can match at most one other object (two objects each
overlapping more than half of the union with the same object is impossible),
so :func:`match` needs no assignment step.

:func:`score` evaluates a segmentation the way the issue's evaluation stage
reports it: one-to-one matching by optimal assignment at IoU >= t for
t = 0.50, 0.55, ..., 0.95, precision, recall, F1 and AP per threshold, their
mean AP, panoptic quality (Kirillov et al. 2019) and the Cell Tracking
Challenge's SEG; :func:`pool_scores` adds images up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def overlap_table(gt, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every pair of overlapping objects.

    Parameters
    ----------
    gt, pred : ndarray of int, same shape
        Instance labels, 0 = background.

    Returns
    -------
    gt_ids, pred_ids : ndarray of int64, shape (P,)
        The overlapping pairs (both non-zero).
    intersection : ndarray of int64, shape (P,)
        Pixels the pair shares.
    iou : ndarray of float64, shape (P,)
        Their intersection over union.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    if g.size and (g.min() < 0 or p.min() < 0):
        raise ValueError("label ids must not be negative")
    g_area = np.bincount(g)
    p_area = np.bincount(p)
    both = (g > 0) & (p > 0)
    pairs = g[both] * (int(p.max()) + 1) + p[both]
    keys, inter = np.unique(pairs, return_counts=True)
    gi = keys // (int(p.max()) + 1)
    pi = keys % (int(p.max()) + 1)
    union = g_area[gi] + p_area[pi] - inter
    return gi, pi, inter.astype(np.int64), inter / union


def _pairs_and_counts(gt: np.ndarray, pred: np.ndarray):
    """:func:`overlap_table`, and the numbers of true and predicted objects."""
    table = overlap_table(gt, pred)
    return table, int(np.unique(gt[gt > 0]).size), int(np.unique(pred[pred > 0]).size)


@dataclass(frozen=True)
class Matching:
    """Counts of a matching at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    mean_matched_iou: float

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN); 1 when there is nothing to find and nothing found."""
        total = self.tp + self.fp + self.fn
        return 1.0 if total == 0 else self.tp / total

    @property
    def precision(self) -> float:
        return 1.0 if self.n_pred == 0 else self.tp / self.n_pred

    @property
    def recall(self) -> float:
        return 1.0 if self.n_true == 0 else self.tp / self.n_true

    @property
    def f1(self) -> float:
        total = 2 * self.tp + self.fp + self.fn
        return 1.0 if total == 0 else 2 * self.tp / total


def match(gt, pred, *, threshold: float = 0.5) -> Matching:
    """Match predicted objects to ground-truth objects at an IoU threshold.

    Parameters
    ----------
    gt, pred : ndarray of int, same shape
        Instance labels, 0 = background. Ids need not be consecutive.
    threshold : float
        IoU above which two objects match; must be at least 0.5, where
        matches are unique without an assignment step.

    Returns
    -------
    Matching

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 2, 2]])
    >>> pred = np.array([[3, 3, 0, 0, 4]])
    >>> m = match(gt, pred)
    >>> (m.tp, m.fp, m.fn, m.ap)
    (1, 1, 1, 0.3333333333333333)
    """
    if not 0.5 <= threshold < 1:
        raise ValueError(f"threshold must be in [0.5, 1), got {threshold}")
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    (_gi, _pi, _, iou), n_true, n_pred = _pairs_and_counts(gt, pred)
    hit = iou > threshold
    tp = int(hit.sum())
    return Matching(threshold=float(threshold), tp=tp, fp=n_pred - tp, fn=n_true - tp,
                    n_true=n_true, n_pred=n_pred,
                    mean_matched_iou=float(iou[hit].mean()) if tp else 0.0)


def average_precision(gt, pred, *, threshold: float = 0.5) -> float:
    """AP = TP / (TP + FP + FN) at an IoU threshold; see :func:`match`."""
    return match(gt, pred, threshold=threshold).ap


def split_pairs(gt, pred, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Which touching ground-truth pairs come out as two separate objects.

    A pair (i, j) of ground-truth cells counts as split when the predicted
    object that covers the largest part of cell i and the one that covers the
    largest part of cell j are different objects, each covering at least a
    quarter of its cell. Two touching cells predicted as one object, or a
    cell the prediction misses, leave the pair unsplit.

    Parameters
    ----------
    gt, pred : ndarray of int, same shape
        Ground-truth and predicted instance labels.
    pairs : iterable of (int, int)
        Ground-truth id pairs, e.g. from :func:`unetpipe.synth.touching_pairs`.

    Returns
    -------
    ndarray of bool, shape (P,)
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    gi, pi, inter, _ = overlap_table(gt, pred)
    # the dominant predicted object of every ground-truth cell, 0 if the cell
    # is mostly background in the prediction
    g_area = np.bincount(gt.ravel().astype(np.int64))
    dominant: dict[int, int] = {}
    best: dict[int, int] = {}
    for g, p, n in zip(gi.tolist(), pi.tolist(), inter.tolist(), strict=True):
        if n > best.get(g, 0):
            best[g], dominant[g] = n, p
    def owner(cell: int) -> int:
        # a cell whose largest predicted overlap is under a quarter of it is lost
        n = best.get(cell, 0)
        return dominant[cell] if n and 4 * n >= g_area[cell] else 0

    out = []
    for i, j in pairs:
        di, dj = owner(int(i)), owner(int(j))
        out.append(di != 0 and dj != 0 and di != dj)
    return np.array(out, dtype=bool)


# --- evaluation: optimal matching over IoU thresholds, PQ, SEG -----------------------

DEFAULT_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds 0.50, 0.55, ..., 0.95 (COCO, Data Science Bowl 2018, StarDist)."""


def _assign(gi, pi, iou, threshold: float) -> np.ndarray:
    """Indices of the pairs in a one-to-one matching with IoU >= threshold that
    maximises the number of matches, then their summed IoU."""
    from scipy.optimize import linear_sum_assignment

    keep = np.flatnonzero(iou >= threshold)
    if keep.size == 0:
        return keep
    g_ids, g_row = np.unique(gi[keep], return_inverse=True)
    p_ids, p_col = np.unique(pi[keep], return_inverse=True)
    if g_ids.size == keep.size and p_ids.size == keep.size:
        return keep  # no object in two candidate pairs: nothing to choose
    # a match is worth more than any sum of IoUs (at most one per match), so
    # the assignment first maximises the count, then the IoU among equal counts
    worth = min(g_ids.size, p_ids.size) + 1.0
    gain = np.zeros((g_ids.size, p_ids.size))
    gain[g_row, p_col] = worth + iou[keep]
    index = -np.ones((g_ids.size, p_ids.size), dtype=np.int64)
    index[g_row, p_col] = keep
    rows, cols = linear_sum_assignment(gain, maximize=True)
    chosen = index[rows, cols]
    return chosen[chosen >= 0]


@dataclass(frozen=True)
class Scores:
    """Scores of one image, or pooled over images (:func:`pool_scores`).

    Counts are kept (not ratios), so pooling over images adds them up.
    """

    thresholds: tuple[float, ...]
    tp: tuple[int, ...]
    n_true: int
    n_pred: int
    iou_sum: float  # summed IoU of the matches at thresholds[0]
    seg_sum: float  # summed SEG Jaccard indices of the true objects
    images: int = 1

    def _at(self, threshold: float) -> int:
        try:
            return self.tp[self.thresholds.index(round(float(threshold), 10))]
        except ValueError:
            raise ValueError(f"no scores at IoU {threshold}; have {self.thresholds}") from None

    def counts(self, threshold: float = 0.5) -> tuple[int, int, int]:
        """TP, FP, FN at an IoU threshold."""
        tp = self._at(threshold)
        return tp, self.n_pred - tp, self.n_true - tp

    def precision(self, threshold: float = 0.5) -> float:
        """TP / (TP + FP); with no prediction, 1 if there was nothing to find, else 0."""
        tp, fp, fn = self.counts(threshold)
        return (1.0 if fn == 0 else 0.0) if tp + fp == 0 else tp / (tp + fp)

    def recall(self, threshold: float = 0.5) -> float:
        """TP / (TP + FN); with nothing to find, 1 if nothing was found, else 0."""
        tp, fp, fn = self.counts(threshold)
        return (1.0 if fp == 0 else 0.0) if tp + fn == 0 else tp / (tp + fn)

    def f1(self, threshold: float = 0.5) -> float:
        tp, fp, fn = self.counts(threshold)
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    def ap(self, threshold: float = 0.5) -> float:
        """TP / (TP + FP + FN): 1 when there is nothing to find and nothing found."""
        tp, fp, fn = self.counts(threshold)
        return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)

    @property
    def mean_ap(self) -> float:
        """AP averaged over the thresholds."""
        return float(np.mean([self.ap(t) for t in self.thresholds]))

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the matches at the first threshold (0 without matches)."""
        tp = self.tp[0]
        return self.iou_sum / tp if tp else 0.0

    @property
    def panoptic_quality(self) -> float:
        """PQ = (sum of matched IoUs) / (TP + FP/2 + FN/2) at the first threshold."""
        tp, fp, fn = self.counts(self.thresholds[0])
        denominator = tp + 0.5 * fp + 0.5 * fn
        return 1.0 if denominator == 0 else self.iou_sum / denominator

    @property
    def seg(self) -> float:
        """Cell Tracking Challenge SEG: mean Jaccard index over the true objects
        (NaN when there are none)."""
        return self.seg_sum / self.n_true if self.n_true else float("nan")

    def to_dict(self) -> dict:
        """Plain values for JSON: counts and scores per threshold, and the summaries."""
        per = []
        for t in self.thresholds:
            tp, fp, fn = self.counts(t)
            per.append({"iou_threshold": t, "tp": tp, "fp": fp, "fn": fn,
                        "precision": self.precision(t), "recall": self.recall(t),
                        "f1": self.f1(t), "ap": self.ap(t)})
        return {"images": self.images, "n_true": self.n_true, "n_pred": self.n_pred,
                "per_threshold": per, "mean_ap": self.mean_ap,
                "panoptic_quality": self.panoptic_quality,
                "mean_matched_iou": self.mean_matched_iou,
                "seg": None if not self.n_true else self.seg}


def score(gt, pred, *, thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> Scores:
    """Score predicted instances against ground truth.

    At each IoU threshold t, predicted and true objects are matched one to
    one by optimal assignment (most matches, then the largest summed IoU),
    a match needing IoU >= t. SEG pairs each true object R with the
    predicted object covering more than half of it (at most one can) and
    averages their Jaccard index over the true objects, 0 for an unpaired R
    (Maska et al. 2014, the Cell Tracking Challenge's SEG).

    Parameters
    ----------
    gt, pred : ndarray of int, same shape
        Instance labels, 0 = background; ids need not be consecutive.
    thresholds : iterable of float
        IoU thresholds, in (0, 1]; panoptic quality and the mean matched
        IoU use the first (0.5 by default, where PQ's matches are unique).

    Returns
    -------
    Scores

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 5, 0, 0, 0, 0]])
    >>> s = score(gt, pred)
    >>> s.counts(0.5), s.counts(0.8), s.seg
    ((1, 0, 1), (0, 1, 2), 0.375)
    """
    thresholds = tuple(round(float(t), 10) for t in thresholds)
    if not thresholds or any(not 0 < t <= 1 for t in thresholds):
        raise ValueError(f"IoU thresholds must be in (0, 1], got {thresholds}")
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    (gi, pi, inter, iou), n_true, n_pred = _pairs_and_counts(gt, pred)
    tps, iou_sum = [], 0.0
    for k, t in enumerate(thresholds):
        chosen = _assign(gi, pi, iou, t)
        tps.append(int(chosen.size))
        if k == 0:
            iou_sum = float(iou[chosen].sum())
    g_area = np.bincount(gt.ravel().astype(np.int64)) if gt.size else np.zeros(1, np.int64)
    covers = 2 * inter > g_area[gi]  # the predicted object covers more than half of R
    seg_sum = float(iou[covers].sum())
    return Scores(thresholds=thresholds, tp=tuple(tps), n_true=n_true, n_pred=n_pred,
                  iou_sum=iou_sum, seg_sum=seg_sum)


def pool_scores(scores: Iterable[Scores]) -> Scores:
    """Scores over several images: their counts and sums added up."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to pool")
    thresholds = scores[0].thresholds
    if any(s.thresholds != thresholds for s in scores):
        raise ValueError("scores at different IoU thresholds cannot be pooled")
    return Scores(thresholds=thresholds,
                  tp=tuple(int(v) for v in np.sum([s.tp for s in scores], axis=0)),
                  n_true=sum(s.n_true for s in scores), n_pred=sum(s.n_pred for s in scores),
                  iou_sum=sum(s.iou_sum for s in scores),
                  seg_sum=sum(s.seg_sum for s in scores),
                  images=sum(s.images for s in scores))
