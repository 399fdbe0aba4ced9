"""Instance segmentation scores: matching by intersection over union.

The score used during training and in the ablation is the "average
precision" of the instance segmentation challenges (Data Science Bowl 2018,
Cellpose, StarDist): at an IoU threshold t, a predicted object and a
ground-truth object match when their IoU exceeds t, and

    AP(t) = TP / (TP + FP + FN).

For t >= 0.5 an object can match at most one other object (two objects each
overlapping more than half of the union with the same object is impossible),
so no assignment step is needed.
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
    _gi, _pi, _, iou = overlap_table(gt, pred)
    n_true = int(np.unique(gt[gt > 0]).size)
    n_pred = int(np.unique(pred[pred > 0]).size)
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
