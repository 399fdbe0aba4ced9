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
Challenge's SEG; :func:`pool_scores` adds images up. The scores need only
an overlap table (pixels per object and per overlapping pair):
:func:`score_overlaps` scores one, and :func:`overlap_counts` sums one up
chunk by chunk over Dask arrays too large to hold, so ``score`` on a Dask
array gives the same result as on the NumPy array.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

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
        Ground-truth id pairs, e.g. from :func:`unetpipe.inputs.synth.touching_pairs`.

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
                "seg": None if not self.n_true else self.seg,
                "thresholds": list(self.thresholds),
                "iou_sum": self.iou_sum, "seg_sum": self.seg_sum}

    @classmethod
    def from_dict(cls, d: Mapping) -> Scores:
        """The :class:`Scores` that :meth:`to_dict` wrote: ``from_dict(s.to_dict()) == s``.

        Only the counts and sums are read (``thresholds``, ``per_threshold``'s
        ``tp``, ``n_true``, ``n_pred``, ``images``, ``iou_sum``, ``seg_sum``);
        the ratios are recomputed from them, so pooling scores read back from
        JSON is exact.

        Raises
        ------
        ValueError
            When a field is missing or the per-threshold counts contradict
            the totals.
        """
        try:
            thresholds = tuple(round(float(t), 10) for t in d["thresholds"])
            per = {round(float(row["iou_threshold"]), 10): row for row in d["per_threshold"]}
            n_true, n_pred = int(d["n_true"]), int(d["n_pred"])
            scores = cls(thresholds=thresholds, tp=tuple(int(per[t]["tp"]) for t in thresholds),
                         n_true=n_true, n_pred=n_pred, iou_sum=float(d["iou_sum"]),
                         seg_sum=float(d["seg_sum"]), images=int(d["images"]))
            wrong = [t for t in thresholds
                     if scores.counts(t)[1:] != (int(per[t]["fp"]), int(per[t]["fn"]))]
        except KeyError as e:
            raise ValueError(f"not a dictionary from Scores.to_dict: no entry {e}") from None
        if wrong:
            raise ValueError(f"the counts at IoU {wrong[0]} contradict n_true and n_pred")
        return scores


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    thresholds = tuple(round(float(t), 10) for t in thresholds)
    if not thresholds or any(not 0 < t <= 1 for t in thresholds):
        raise ValueError(f"IoU thresholds must be in (0, 1], got {thresholds}")
    return thresholds


def _ids(a) -> np.ndarray:
    """Label ids as uint64, from any integer, boolean or float dtype (floats are
    truncated, as in :func:`overlap_table`), or a list of Python ints up to 2**64 - 1."""
    if not isinstance(a, np.ndarray):
        # np.asarray([2**63, 5]) would be float64: keep Python ints exact
        a = np.asarray(a) if hasattr(a, "__array__") else np.array(list(a), dtype=object)
    if a.dtype.kind in "ub":
        return a.astype(np.uint64, copy=False)
    if a.dtype.kind == "O":
        if any(v < 0 for v in a.flat):
            raise ValueError("label ids must not be negative")
        try:
            return np.array(a.tolist(), dtype=np.uint64).reshape(a.shape)
        except (OverflowError, TypeError, ValueError):
            raise ValueError("label ids must be integers below 2**64") from None
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        raise ValueError("label ids must not be negative")
    return a.view(np.uint64)


class Overlaps(NamedTuple):
    """Everything the scores need from two label images: an overlap table.

    ``score_overlaps(*overlaps)`` scores it. Ids are uint64 and never 0
    (background); pairs are sorted by ground-truth id, then predicted id,
    and sizes by id.

    Attributes
    ----------
    gt_ids, pred_ids : ndarray of uint64, shape (P,)
        Every pair of a true and a predicted object that share pixels.
    intersection : ndarray of int64, shape (P,)
        The pixels each pair shares.
    gt_sizes, pred_sizes : tuple of (ndarray of uint64, ndarray of int64)
        Every object's id and pixel count, overlapping or not.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    intersection: np.ndarray
    gt_sizes: tuple[np.ndarray, np.ndarray]
    pred_sizes: tuple[np.ndarray, np.ndarray]


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Starts of the runs of equal rows in sorted key columns."""
    if not keys[0].size:
        return np.zeros(0, np.intp)
    change = np.zeros(keys[0].size, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def _sum_sizes(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of repeated ids added up; sorted by id."""
    order = np.argsort(ids, kind="stable")
    ids, counts = ids[order], counts[order]
    start = _runs(ids)
    return ids[start], np.add.reduceat(counts, start) if start.size else counts[:0]


def _sum_pairs(gi: np.ndarray, pi: np.ndarray, n: np.ndarray):
    """Counts of repeated (gi, pi) pairs added up; sorted by gi, then pi."""
    order = np.lexsort((pi, gi))
    gi, pi, n = gi[order], pi[order], n[order]
    start = _runs(gi, pi)
    return gi[start], pi[start], np.add.reduceat(n, start) if start.size else n[:0]


def _dense(top: int, n: int) -> bool:
    """Whether a table of ``top + 1`` counters is cheap next to ``n`` pixels: then
    bincount (linear time, memory bounded by the block) replaces a sort."""
    return top < 2 * n + 1024


def _unique(a: np.ndarray):
    """``np.unique(a, return_inverse=True, return_counts=True)`` of non-negative ints."""
    top = int(a.max()) if a.size else 0
    if not _dense(top, a.size):
        return np.unique(a, return_inverse=True, return_counts=True)
    counts = np.bincount(a.astype(np.intp, copy=False), minlength=1)
    ids = np.flatnonzero(counts)
    rank = np.zeros(counts.size, np.intp)
    rank[ids] = np.arange(ids.size)
    return ids.astype(a.dtype), rank[a.astype(np.intp, copy=False)], counts[ids]


def _block_overlaps(gt, pred) -> Overlaps:
    """:class:`Overlaps` of two label arrays of the same shape, in memory."""
    g = _ids(np.asarray(gt)).ravel()
    p = _ids(np.asarray(pred)).ravel()
    g_ids, g_inv, g_n = _unique(g)
    p_ids, p_inv, p_n = _unique(p)
    both = (g != 0) & (p != 0)
    # pairs coded by the ids' ranks in this block: small, whatever the ids
    width = max(p_ids.size, 1)
    code = g_inv[both].astype(np.int64) * width + p_inv[both]
    if _dense(g_ids.size * width, code.size):
        inter = np.bincount(code, minlength=1)
        code = np.flatnonzero(inter)
        inter = inter[code]
    else:
        code, inter = np.unique(code, return_counts=True)
    gi, pi = g_ids[code // width], p_ids[code % width]
    g_fg, p_fg = g_ids != 0, p_ids != 0
    return Overlaps(gi, pi, inter.astype(np.int64),
                    (g_ids[g_fg], g_n[g_fg].astype(np.int64)),
                    (p_ids[p_fg], p_n[p_fg].astype(np.int64)))


def _merge_overlaps(*parts: Overlaps) -> Overlaps:
    """Overlaps of disjoint parts of two images: their counts added up."""
    def cat(get):
        return np.concatenate([get(q) for q in parts])

    gi, pi, inter = _sum_pairs(cat(lambda q: q.gt_ids), cat(lambda q: q.pred_ids),
                               cat(lambda q: q.intersection))
    return Overlaps(gi, pi, inter,
                    _sum_sizes(cat(lambda q: q.gt_sizes[0]), cat(lambda q: q.gt_sizes[1])),
                    _sum_sizes(cat(lambda q: q.pred_sizes[0]), cat(lambda q: q.pred_sizes[1])))


def overlap_counts(gt, pred, *, threads: int | None = None, split_every: int = 8,
                   progress: str | None = None) -> Overlaps:
    """The overlap table of two label images, computed chunk by chunk with Dask.

    One task per chunk counts the pixels of every object and of every
    overlapping pair in that chunk (``np.unique``, so ids can be any uint64);
    the per-chunk tables are then added up in a tree of ``split_every``-way
    merges. Memory thus grows with the number of objects and pairs, not with
    the image: a task holds one chunk of each array.

    Parameters
    ----------
    gt, pred : dask.array.Array or array-like, same shape
        Instance labels, 0 = background; anything :func:`dask.array.asarray`
        accepts (numpy, Zarr arrays). ``pred`` is rechunked to ``gt``'s chunks.
    threads : int, optional
        Compute with Dask's threaded scheduler and this many threads; by
        default, with the scheduler Dask is configured to use.
    split_every : int
        How many tables one merge task adds up.
    progress : str, optional
        Label of a progress bar over the chunks (local schedulers only).

    Returns
    -------
    Overlaps

    Raises
    ------
    ValueError
        When the shapes differ, or an id is negative.

    Examples
    --------
    >>> o = overlap_counts(np.array([[1, 1, 0, 2]]), np.array([[7, 0, 0, 0]]))
    >>> o.gt_ids.tolist(), o.pred_ids.tolist(), o.intersection.tolist()
    ([1], [7], [1])
    >>> [a.tolist() for a in o.gt_sizes]
    [[1, 2], [2, 1]]
    """
    import dask
    import dask.array as da
    from dask.callbacks import Callback

    from ..core.progress import bar

    gt, pred = da.asarray(gt), da.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    pred = pred.rechunk(gt.chunks)
    prefix = f"overlap-counts-{dask.base.tokenize(gt, pred)}"
    level = [dask.delayed(_block_overlaps)(g, p, dask_key_name=f"{prefix}-block-{i}")
             for i, (g, p) in enumerate(zip(gt.to_delayed().ravel(),
                                            pred.to_delayed().ravel(), strict=True))]
    n_blocks, depth = len(level), 0
    while depth == 0 or len(level) > 1:  # at least one merge: sorted, zero-free output
        depth += 1
        level = [dask.delayed(_merge_overlaps)(*level[i:i + split_every],
                                               dask_key_name=f"{prefix}-merge-{depth}-{i}")
                 for i in range(0, len(level), split_every)]
    kwargs = {"scheduler": "threads", "num_workers": threads} if threads else {}
    with bar(total=n_blocks, desc=progress or "score", unit="chunk", disable=progress is None,
             leave=False) as pbar:

        class _Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(key, str) and key.startswith(f"{prefix}-block-"):
                    pbar.update(1)

        with _Progress():
            (result,) = dask.compute(level[0], **kwargs)
    return result


def _size_table(sizes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) from a mapping or a pair of arrays; sorted, background dropped."""
    if isinstance(sizes, Mapping):
        ids, counts = list(sizes.keys()), list(sizes.values())
    else:
        try:
            ids, counts = sizes
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a mapping id -> pixel count or a pair "
                             "(ids, counts)") from None
    ids = _ids(ids).ravel()
    counts = np.asarray(counts, dtype=np.int64).ravel()
    if ids.shape != counts.shape:
        raise ValueError(f"{name}: {ids.size} ids but {counts.size} counts")
    if counts.size and counts.min() < 0:
        raise ValueError(f"{name}: pixel counts must not be negative")
    keep = (ids != 0) & (counts > 0)
    return _sum_sizes(ids[keep], counts[keep])


def _sizes_of(ids: np.ndarray, table: tuple[np.ndarray, np.ndarray], what: str) -> np.ndarray:
    known, counts = table
    at = np.minimum(np.searchsorted(known, ids), max(known.size - 1, 0))
    found = known[at] == ids if known.size else np.zeros(ids.shape, bool)
    if not found.all():
        raise ValueError(f"{what} object {int(ids[~found][0])} overlaps another object "
                         "but has no size")
    return counts[at]


def score_overlaps(gt_ids, pred_ids, intersection, gt_sizes, pred_sizes, *,
                   thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> Scores:
    """Score predicted instances against ground truth from their overlap table.

    See :func:`score` for the matching and the scores. Only the pixel counts
    matter, so the table can be summed over the chunks of an image too large
    to hold (:func:`overlap_counts`): ``score_overlaps(*overlap_counts(gt, pred))``.

    Parameters
    ----------
    gt_ids, pred_ids : array-like of int, shape (P,)
        Pairs of a true and a predicted object that share pixels. A pair may
        repeat (its counts are added up); pairs with a 0 (background) id are
        ignored.
    intersection : array-like of int, shape (P,)
        Pixels each pair shares.
    gt_sizes, pred_sizes : mapping of int to int, or pair of array-like (ids, counts)
        The pixel count of *every* object, overlapping or not: objects that
        overlap nothing are the false negatives and false positives. Id 0
        and objects of 0 pixels are ignored; repeated ids are added up.
    thresholds : iterable of float
        IoU thresholds, in (0, 1].

    Returns
    -------
    Scores

    Raises
    ------
    ValueError
        For a negative id or count, arrays of different lengths, a pair
        whose object has no size, or an intersection larger than an object.

    Examples
    --------
    >>> s = score_overlaps([1], [5], [3], {1: 4, 2: 2}, {5: 3})
    >>> s.counts(0.5), s.counts(0.8), s.seg
    ((1, 0, 1), (0, 1, 2), 0.375)
    """
    thresholds = _check_thresholds(thresholds)
    g_table = _size_table(gt_sizes, "gt_sizes")
    p_table = _size_table(pred_sizes, "pred_sizes")
    gi, pi = _ids(gt_ids).ravel(), _ids(pred_ids).ravel()
    inter = np.asarray(intersection, dtype=np.int64).ravel()
    if not gi.size == pi.size == inter.size:
        raise ValueError(f"gt_ids, pred_ids and intersection differ in length: "
                         f"{gi.size}, {pi.size}, {inter.size}")
    if inter.size and inter.min() < 0:
        raise ValueError("intersections must not be negative")
    keep = (gi != 0) & (pi != 0) & (inter > 0)
    gi, pi, inter = _sum_pairs(gi[keep], pi[keep], inter[keep])
    g_area = _sizes_of(gi, g_table, "ground-truth")
    p_area = _sizes_of(pi, p_table, "predicted")
    if np.any(inter > np.minimum(g_area, p_area)):
        raise ValueError("an intersection is larger than one of its objects")
    iou = inter / (g_area + p_area - inter)
    tps, iou_sum = [], 0.0
    for k, t in enumerate(thresholds):
        chosen = _assign(gi, pi, iou, t)
        tps.append(int(chosen.size))
        if k == 0:
            iou_sum = float(iou[chosen].sum())
    covers = 2 * inter > g_area  # the predicted object covers more than half of R
    seg_sum = float(iou[covers].sum())
    return Scores(thresholds=thresholds, tp=tuple(tps), n_true=int(g_table[0].size),
                  n_pred=int(p_table[0].size), iou_sum=iou_sum, seg_sum=seg_sum)


def _is_dask(a) -> bool:
    da = sys.modules.get("dask.array")  # not imported: cannot be a Dask array
    return da is not None and isinstance(a, da.Array)


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
    gt, pred : ndarray or dask.array.Array of int, same shape
        Instance labels, 0 = background; ids need not be consecutive and
        may be any uint64. Dask arrays are scored chunk by chunk
        (:func:`overlap_counts`), with the same result.
    thresholds : iterable of float
        IoU thresholds, in (0, 1]; panoptic quality and the mean matched
        IoU use the first (0.5 by default, where PQ's matches are unique).

    Returns
    -------
    Scores

    See Also
    --------
    score_overlaps : the same from an overlap table.

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 5, 0, 0, 0, 0]])
    >>> s = score(gt, pred)
    >>> s.counts(0.5), s.counts(0.8), s.seg
    ((1, 0, 1), (0, 1, 2), 0.375)
    """
    thresholds = _check_thresholds(thresholds)
    if _is_dask(gt) or _is_dask(pred):
        overlaps = overlap_counts(gt, pred)
    else:
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth and prediction differ in shape: "
                             f"{gt.shape} vs {pred.shape}")
        overlaps = _block_overlaps(gt, pred)
    return score_overlaps(*overlaps, thresholds=thresholds)


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
