"""Calibrating the segmentation settings on validation images (the "tune" stage).

The network's probabilities are turned into instances by :func:`segment_array`
with a :class:`~unetpipe.stages.instances.SegmentParams`. Its defaults suit
the synthetic demo; on real data the probability maps are softer at object
borders and the same settings make objects too wide. Like StarDist's
``optimize_thresholds``, :func:`tune_params` searches the settings that score
best against ground truth on validation images (probabilities predicted by
the trained model, and their true instance labels); :func:`tune_stores` does
the same on stores too large to hold, through a few windows read lazily.

The search
----------
Every setting is scored on all images at once: the images' match counts are
pooled (:func:`unetpipe.stages.metrics.pool_scores`) before the objective is
taken. The start settings (the defaults) are scored first. Then, for every
family of settings, i.e. ``method="components"``, ``method="watershed"``
with ``seeds="classes"`` and ``method="watershed"`` with ``seeds="distance"``
(:class:`TuneSearch` can leave families out):

1. a coarse grid over ``threshold`` x ``foreground`` (0.3, 0.4, ..., 0.8
   each; only the values that matter in that family: distance seeds ignore
   ``threshold``, and components that do not grow ignore ``foreground``);
   36 settings, 6 for distance seeds;
2. local refinement around the family's best by coordinate descent over
   ``threshold`` and ``foreground``, in steps of 0.05, then 0.025: all
   neighbours one step away are scored and the best becomes the centre,
   until the centre stays (at most ``max_moves`` moves per step size);
3. a sweep of ``grow`` (0, 1, 2, 3 pixels; components only: watershed
   ignores it), of ``h`` (0.5, 1, 2, 3, 4 in the units of the spacing;
   distance seeds only) and of ``min_size`` (0, and 1/4 and 1/2 of the 5th
   percentile of the true objects' sizes, in the units of the spacing),
   one after another, each keeping its best value;
4. a last coordinate descent over ``threshold`` and ``foreground`` at the
   finest step, as the best ``grow`` moves the best thresholds.

``max_size`` and ``fill_holes`` keep their start values. A setting is never
segmented twice: settings that differ only in values their family ignores
(say the ``threshold`` of distance seeds, or the ``foreground`` of components
that do not grow) are the same setting. On a small image the search tries
about 100 to 250 settings (120 on the 128 x 128 test images); ``max_settings``
(400 by default) bounds it. The search is deterministic.

The chosen setting is the best scoring one. Ties go to the setting closest to
the start: fewest changed values, then the simpler family (components, then
watershed with class seeds, then distance seeds), then the smallest change
of ``threshold`` and ``foreground``, then the one scored first. So the start
settings are kept unless another setting scores strictly better. The same
order picks the centre of each descent, so where the score is flat (exact
synthetic maps) the search stays near the start rather than wandering.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..core.boxes import box_text
from ..core.errors import ConfigError, InputError
from ..nn.checkpoint import SEGMENT_PARAMS
from .instances import SegmentParams, default_grow, mode_of, segment_array
from .metrics import DEFAULT_THRESHOLDS, Scores, overlap_table, pool_scores, score

FIXABLE = ("threshold", "foreground", "grow", "h", "min_size")
_LIMITS = (0.05, 0.95)  # threshold and foreground stay inside (0, 1)
_FAMILIES = (("components", None), ("watershed", "classes"), ("watershed", "distance"))
DEFAULT_WINDOW = {2: (512, 512), 3: (32, 256, 256)}
"""Largest window :func:`tune_stores` reads, per number of spatial axes."""


@dataclass(frozen=True)
class TuneSearch:
    """What :func:`tune_params` searches (see the module's notes).

    Attributes
    ----------
    methods : tuple of str
        Segmentation methods searched: ``"components"``, ``"watershed"``.
    seeds : tuple of str
        Watershed seeds searched: ``"classes"``, ``"distance"``.
    grid : tuple of float
        Coarse values of ``threshold`` and of ``foreground``, in (0, 1).
    steps : tuple of float
        Step sizes of the coordinate descent, largest first.
    grow : tuple of int
        Values of ``grow`` (pixels) swept for components.
    h : tuple of float
        Values of ``h`` swept for distance seeds (units of the spacing).
    min_size : tuple of float
        Values of ``min_size`` swept, as fractions of the 5th percentile of
        the true objects' sizes (0 keeps every object).
    max_moves : int
        Most moves of the coordinate descent per step size.
    max_settings : int
        Most settings scored in all (the start settings included); the
        search skips what would go beyond.
    fixed : tuple of str
        Settings held at their start values (of ``threshold``,
        ``foreground``, ``grow``, ``h``, ``min_size``): those the config sets.
    """

    methods: tuple[str, ...] = ("components", "watershed")
    seeds: tuple[str, ...] = ("classes", "distance")
    grid: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    steps: tuple[float, ...] = (0.05, 0.025)
    grow: tuple[int, ...] = (0, 1, 2, 3)
    h: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0)
    min_size: tuple[float, ...] = (0.0, 0.25, 0.5)
    max_moves: int = 8
    max_settings: int = 400
    fixed: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping | None, prefix: str = "tune.search") -> TuneSearch:
        """A :class:`TuneSearch` from config values (lists become tuples); checked."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"config key '{prefix}.{unknown[0]}' is unknown; known keys: "
                              f"{', '.join(sorted(known))}")
        converted = {k: tuple(v) if isinstance(v, list | tuple) else v
                     for k, v in values.items()}
        return cls(**converted).check(prefix)

    def check(self, prefix: str = "tune.search") -> TuneSearch:
        """Raise ConfigError naming the key of a bad value."""
        def bad(key, why):
            raise ConfigError(f"config key '{prefix}.{key}': {getattr(self, key)!r} {why}")

        for key in ("methods", "seeds", "grid", "steps", "grow", "h", "min_size"):
            if not isinstance(getattr(self, key), tuple) or not getattr(self, key):
                bad(key, "must be a non-empty list")
        if any(m not in ("components", "watershed") for m in self.methods):
            bad("methods", "may hold only 'components' and 'watershed'")
        if any(s not in ("classes", "distance") for s in self.seeds):
            bad("seeds", "may hold only 'classes' and 'distance'")
        if any(not 0 < v < 1 for v in self.grid):
            bad("grid", "values must lie between 0 and 1")
        if any(not 0 < v < 0.5 for v in self.steps):
            bad("steps", "values must lie between 0 and 0.5")
        if any(int(v) != v or v < 0 for v in self.grow):
            bad("grow", "values must be whole numbers, not negative")
        if any(v <= 0 for v in self.h):
            bad("h", "values must be positive")
        if any(v < 0 for v in self.min_size):
            bad("min_size", "values must not be negative")
        if int(self.max_moves) != self.max_moves or self.max_moves < 0:
            bad("max_moves", "must be a whole number, not negative")
        if int(self.max_settings) != self.max_settings or self.max_settings < 1:
            bad("max_settings", "must be a whole number, at least 1")
        if not isinstance(self.fixed, tuple) or not set(self.fixed) <= set(FIXABLE):
            bad("fixed", f"may hold only {', '.join(FIXABLE)}")
        return self


@dataclass(frozen=True)
class TuneResult:
    """The outcome of :func:`tune_params` or :func:`tune_stores`.

    Attributes
    ----------
    params : SegmentParams
        The chosen settings.
    score : float
        Their objective, pooled over the images.
    defaults_score : float
        The objective of the start settings (``history[0]``).
    objective : str
        What was maximised, e.g. ``"mean_ap"`` (see :func:`tune_params`).
    n_tried : int
        Settings scored, each once.
    history : tuple of (dict, float)
        Every setting scored, in order: its ``SegmentParams`` as a dict and
        its objective. The first is the start settings.
    seconds : float
        Wall time of the search.
    """

    params: SegmentParams
    score: float
    defaults_score: float
    objective: str
    n_tried: int
    history: tuple[tuple[dict, float], ...] = field(repr=False)
    seconds: float

    @property
    def gain(self) -> float:
        """How much the chosen settings score above the defaults."""
        return self.score - self.defaults_score

    def to_dict(self) -> dict:
        """Plain values (dicts, lists, str, float, int, None), for YAML, JSON and a
        checkpoint loaded with ``torch.load(..., weights_only=True)``."""
        return {"params": asdict(self.params), "score": float(self.score),
                "defaults_score": float(self.defaults_score), "objective": self.objective,
                "n_tried": int(self.n_tried),
                "history": [{"params": dict(p), "score": float(s)} for p, s in self.history],
                "seconds": float(self.seconds)}

    @classmethod
    def from_dict(cls, d: Mapping) -> TuneResult:
        """The :class:`TuneResult` that :meth:`to_dict` wrote: ``from_dict(r.to_dict()) == r``.

        Raises
        ------
        ValueError
            When an entry is missing or holds settings that ``SegmentParams``
            does not know or rejects.
        """
        try:
            history = tuple((asdict(_params(row["params"])), float(row["score"]))
                            for row in d["history"])
            return cls(params=_params(d["params"]), score=float(d["score"]),
                       defaults_score=float(d["defaults_score"]),
                       objective=str(d["objective"]), n_tried=int(d["n_tried"]),
                       history=history, seconds=float(d["seconds"]))
        except KeyError as e:
            raise ValueError(f"not a dictionary from TuneResult.to_dict: no entry {e}") from None


def _params(d: Mapping) -> SegmentParams:
    known = {f.name for f in fields(SegmentParams)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown segmentation setting {unknown[0]!r}")
    try:
        return SegmentParams(**d).check()
    except ConfigError as e:
        raise ValueError(str(e)) from None


# --- the objective ---------------------------------------------------------------------


def _objective(name: str) -> tuple[tuple[float, ...], Callable[[Scores], float]]:
    """The IoU thresholds to score at, and the objective of the pooled scores."""
    if name == "mean_ap":
        return DEFAULT_THRESHOLDS, lambda s: s.mean_ap
    m = re.fullmatch(r"(ap|f1)_(0?\.\d+)", str(name))
    if m and 0 < float(m.group(2)) < 1:
        t = round(float(m.group(2)), 10)
        if m.group(1) == "ap":
            return (t,), lambda s: s.ap(t)
        return (t,), lambda s: s.f1(t)
    raise ConfigError(f"config key 'tune.objective': {name!r} is not 'mean_ap', 'ap_T' or "
                      "'f1_T' with an IoU threshold T between 0 and 1 (e.g. 'ap_0.7')")


# --- the images, whole or as windows ------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One image (or window) to score settings on.

    ``probabilities`` may extend beyond the scored part (the context read
    around a window); ``core`` cuts the scored part out of its labels.
    """

    probabilities: np.ndarray  # (K, *S'), float32
    truth: np.ndarray  # core's shape; the objects cut by a window edge set to 0
    all_truth: np.ndarray  # core's shape, every object
    core: tuple[slice, ...]
    cut: tuple[tuple[bool, bool], ...]  # per axis: whether the low/high face is a cut
    excluded: np.ndarray  # ids of the true objects cut by a window edge, sorted
    spacing: tuple[float, ...] | None


def _faces(labels: np.ndarray, cut) -> np.ndarray:
    """Ids found on the cut faces."""
    found = [np.zeros(0, labels.dtype)]
    for axis, (low, high) in enumerate(cut):
        if low:
            found.append(np.unique(np.take(labels, 0, axis=axis)))
        if high:
            found.append(np.unique(np.take(labels, -1, axis=axis)))
    ids = np.unique(np.concatenate(found))
    return ids[ids != 0]


def _case(probabilities, truth, *, core=None, cut=None, spacing=None, where="") -> _Case:
    probs = np.asarray(probabilities, dtype=np.float32)
    truth = np.asarray(truth)
    if truth.dtype.kind == "f":
        truth = truth.astype(np.int64)
    if truth.dtype.kind not in "iu":
        raise ValueError(f"{where}truth must be integer instance labels, not {truth.dtype}")
    core = tuple(slice(0, n) for n in probs.shape[1:]) if core is None else tuple(core)
    if probs.ndim not in (3, 4) or truth.ndim != probs.ndim - 1 \
            or truth.shape != tuple(s.stop - s.start for s in core):
        raise ValueError(f"{where}probabilities of shape {probs.shape} (classes first, then 2 "
                         f"or 3 spatial axes) do not match truth of shape {truth.shape}")
    mode_of(probs.shape[0])  # 2 or 3 classes
    if not np.isfinite(probs).all():
        raise ValueError(f"{where}probabilities hold NaN or infinite values")
    if spacing is not None and len(spacing) != truth.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {truth.ndim} spatial axes")
    cut = tuple((False, False) for _ in range(truth.ndim)) if cut is None else tuple(cut)
    excluded = _faces(truth, cut)
    scored = truth.copy() if excluded.size else truth
    if excluded.size:
        scored[np.isin(truth, excluded)] = 0
    return _Case(probs, scored, truth, core, cut, excluded,
                 None if spacing is None else tuple(float(s) for s in spacing))


def _case_scores(case: _Case, labels: np.ndarray, thresholds) -> Scores:
    """Scores of one window's labels; objects cut by a window edge are left out.

    The true objects that touch a cut face are left out whatever the settings
    (so every setting is scored on the same objects). A predicted object is
    left out when it shares more pixels with those than with the scored true
    objects, or touches a cut face and shares no pixel with a scored object.
    """
    labels = labels[case.core]
    if not case.excluded.size and not any(a or b for a, b in case.cut):
        return score(case.truth, labels, thresholds=thresholds)
    gi, pi, inter, _ = overlap_table(case.all_truth, labels)
    top = int(labels.max()) + 1
    cut_truth = np.isin(gi, case.excluded)
    with_cut = np.bincount(pi[cut_truth], weights=inter[cut_truth], minlength=top)
    with_kept = np.bincount(pi[~cut_truth], weights=inter[~cut_truth], minlength=top)
    touching = np.zeros(top, bool)
    touching[_faces(labels, case.cut).astype(np.int64)] = True
    drop = (with_cut > with_kept) | (touching & (with_kept == 0))
    drop[0] = False
    if drop.any():
        labels = np.where(drop[labels], 0, labels)
    return score(case.truth, labels, thresholds=thresholds)


# --- the search --------------------------------------------------------------------------


def _relevant(p: SegmentParams, n_classes: int) -> dict:
    """The values that decide the segmentation of ``p`` (grow resolved)."""
    out = {"method": p.method}
    grow = default_grow(n_classes) if p.grow is None else int(p.grow)
    if p.method == "components":
        out["threshold"] = p.threshold
        if grow > 0:
            out["foreground"] = p.foreground
        out["grow"] = grow
    elif p.seeds == "classes":
        out.update(seeds="classes", threshold=p.threshold, foreground=p.foreground)
    else:
        out.update(seeds="distance", foreground=p.foreground, h=p.h)
    out.update(min_size=p.min_size, max_size=p.max_size, fill_holes=p.fill_holes)
    return out


def _family(p: SegmentParams) -> int:
    return 0 if p.method == "components" else 1 if p.seeds == "classes" else 2


class _Searcher:
    """Scores settings once each, keeps the history, and ranks it."""

    def __init__(self, cases, start, thresholds, measure, budget, pbar, fixed=()):
        self.cases, self.start, self.fixed = cases, start, set(fixed)
        self.thresholds, self.measure, self.budget, self.pbar = thresholds, measure, budget, pbar
        self.n_classes = cases[0].probabilities.shape[0]
        self.start_values = {**asdict(start), "grow": default_grow(self.n_classes)
                             if start.grow is None else int(start.grow)}
        self.history: list[tuple[SegmentParams, float]] = []
        self.seen: dict[tuple, int] = {}

    def key(self, p: SegmentParams) -> tuple:
        return tuple(sorted(_relevant(p, self.n_classes).items()))

    def evaluate(self, p: SegmentParams) -> int | None:
        """The history index of ``p``, scored now if new; None beyond the budget."""
        k = self.key(p)
        if k in self.seen:
            return self.seen[k]
        if len(self.history) >= self.budget:
            return None
        p.check()
        scores = pool_scores(_case_scores(c, segment_array(c.probabilities, params=p,
                                                           spacing=c.spacing),
                                          self.thresholds) for c in self.cases)
        self.history.append((p, float(self.measure(scores))))
        self.seen[k] = len(self.history) - 1
        self.pbar.update(1)
        return self.seen[k]

    def rank(self, i: int) -> tuple:
        """Sort key: best score, then closest to the start, simplest, first scored."""
        p, value = self.history[i]
        relevant = _relevant(p, self.n_classes)
        changed = sum(v != self.start_values[k] for k, v in relevant.items())
        shift = sum(abs(relevant[k] - self.start_values[k]) for k in ("threshold", "foreground")
                    if k in relevant)
        return (-value, changed, _family(p), round(shift, 6), i)

    def best(self, indices) -> int:
        return min((i for i in indices if i is not None), key=self.rank)

    def descend(self, at: int, step: float, max_moves: int) -> int:
        """Coordinate descent over threshold and foreground from history entry ``at``."""
        for _ in range(max_moves):
            p = self.history[at][0]
            relevant = _relevant(p, self.n_classes)
            moves = [replace(p, **{name: _clip(getattr(p, name) + sign * step)})
                     for name in ("threshold", "foreground")
                     if name in relevant and name not in self.fixed
                     for sign in (-1, 1)]
            moved = self.best([at, *(self.evaluate(q) for q in moves)])
            if moved == at:
                break
            at = moved
        return at

    def sweep(self, at: int, name: str, values) -> int:
        if name in self.fixed:
            return at
        p = self.history[at][0]
        return self.best([at, *(self.evaluate(replace(p, **{name: v})) for v in values)])


def _clip(v: float) -> float:
    return round(min(max(v, _LIMITS[0]), _LIMITS[1]), 4)


def _search(cases: list[_Case], *, objective: str, start: SegmentParams,
            search: TuneSearch, progress: bool) -> TuneResult:
    from ..core.progress import bar

    t0 = time.perf_counter()
    thresholds, measure = _objective(objective)
    start = start.check()
    if len({c.probabilities.shape[0] for c in cases}) > 1:
        raise ValueError("the probabilities differ in their number of classes: "
                         f"{sorted({c.probabilities.shape[0] for c in cases})}")
    sizes = [np.bincount(c.truth.ravel().astype(np.int64))[1:] for c in cases]
    sizes = np.concatenate([s[s > 0] * (math.prod(c.spacing) if c.spacing else 1.0)
                            for s, c in zip(sizes, cases, strict=True)])
    small = float(np.percentile(sizes, 5)) if sizes.size else 0.0
    min_sizes = sorted({round(f * small, 3) for f in search.min_size})
    with bar(total=search.max_settings, desc="tune", unit="setting",
             disable=not progress) as pbar:
        s = _Searcher(cases, start, thresholds, measure, search.max_settings, pbar,
                      fixed=search.fixed)
        s.evaluate(start)
        for method, seeds in _FAMILIES:
            if method not in search.methods or (seeds and seeds not in search.seeds):
                continue
            base = replace(start, method=method, seeds=seeds or start.seeds)
            names = [n for n in ("threshold", "foreground")
                     if n in _relevant(base, s.n_classes) and n not in search.fixed]
            family = [s.evaluate(replace(base, **dict(zip(names, values, strict=True))))
                      for values in itertools.product(search.grid, repeat=len(names))]
            family += [i for i, (q, _) in enumerate(s.history) if _family(q) == _family(base)]
            if all(i is None for i in family):
                continue  # the budget is spent
            at = s.best(family)
            for step in search.steps:
                at = s.descend(at, step, search.max_moves)
            if method == "components":
                at = s.sweep(at, "grow", [int(g) for g in search.grow])
            if seeds == "distance":
                at = s.sweep(at, "h", search.h)
            at = s.sweep(at, "min_size", min_sizes)
            at = s.descend(at, min(search.steps), search.max_moves)
        pbar.update(search.max_settings - len(s.history))
    chosen = s.best(range(len(s.history)))
    params, value = s.history[chosen]
    return TuneResult(params=params, score=value, defaults_score=s.history[0][1],
                      objective=objective, n_tried=len(s.history),
                      history=tuple((asdict(p), v) for p, v in s.history),
                      seconds=time.perf_counter() - t0)


def _search_settings(search) -> TuneSearch:
    if search is None:
        return TuneSearch()
    if isinstance(search, TuneSearch):
        return search.check()
    return TuneSearch.from_mapping(search)


# --- the entry points ----------------------------------------------------------------------


def tune_params(pairs, *, objective: str = "mean_ap", start: SegmentParams = SegmentParams(),
                spacing: Sequence[float] | None = None,
                search: TuneSearch | Mapping | None = None,
                progress: bool = True) -> TuneResult:
    """Search the segmentation settings that score best on validation images.

    Parameters
    ----------
    pairs : sequence of (ndarray, ndarray)
        ``(probabilities, truth)`` per image: class probabilities of shape
        ``(K, *S)`` (K = 2 or 3, as ``unetpipe predict`` writes them; float,
        cast to float32) and the true instance labels of shape ``S``
        (integers, 0 = background), S 2D ``(M, N)`` or 3D ``(P, M, N)``.
        All images need the same K.
    objective : str
        What is maximised, on the match counts pooled over the images as
        :func:`unetpipe.stages.metrics.pool_scores` pools them (true and
        predicted objects matched one to one at IoU >= t):
        ``"mean_ap"``, the mean over t = 0.50, 0.55, ..., 0.95 of
        AP(t) = TP / (TP + FP + FN); ``"ap_T"`` (e.g. ``"ap_0.7"``), AP at
        the one threshold T; ``"f1_T"`` (e.g. ``"f1_0.5"``), the F1 score
        2 TP / (2 TP + FP + FN) at T.
    start : SegmentParams
        The settings the search starts from (the defaults): always scored,
        kept on a tie, and the source of the values not searched
        (``max_size``, ``fill_holes``).
    spacing : sequence of float, optional
        Pixel size per spatial axis; ``min_size`` and ``h`` are in its units
        (default: pixels).
    search : TuneSearch or mapping, optional
        What to search (default :class:`TuneSearch`); a mapping holds its
        fields, as the config would.
    progress : bool
        Show a progress bar over the settings.

    Returns
    -------
    TuneResult
        The chosen settings, their score, the start's score and every setting
        tried. See the module's notes for the search.

    Raises
    ------
    ValueError
        For shapes that do not match, other than 2 or 3 classes, NaN values,
        or no pairs.
    ConfigError
        For an unknown objective or a bad search setting.

    Examples
    --------
    Two objects whose probabilities are too wide by a pixel:

    >>> truth = np.zeros((1, 13), np.uint16)
    >>> truth[0, 2:5], truth[0, 8:11] = 1, 2
    >>> cell = np.where(truth > 0, 0.95, 0.0)
    >>> cell[0, [1, 5, 7, 11]] = 0.55
    >>> p = np.stack([1 - cell, cell]).astype(np.float32)
    >>> result = tune_params([(p, truth)], start=SegmentParams(min_size=0), progress=False)
    >>> result.defaults_score, result.score
    (0.3, 1.0)
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no (probabilities, truth) pairs to tune on")
    cases = [_case(p, t, spacing=spacing, where=f"pair {i}: ") for i, (p, t) in enumerate(pairs)]
    return _search(cases, objective=objective, start=start, search=_search_settings(search),
                   progress=progress)


def window_grid(shape: Sequence[int], window: Sequence[int]) -> list[tuple[slice, ...]]:
    """Windows that tile an image: at most ``window`` per axis, inside the image.

    The last window along an axis is moved back to end at the image's edge,
    so it may overlap its neighbour.

    Parameters
    ----------
    shape : sequence of int
        The image's spatial shape.
    window : sequence of int
        Largest window size per axis.

    Returns
    -------
    list of tuple of slice
        In raster order.

    Examples
    --------
    >>> window_grid((5, 3), (2, 4))
    [(slice(0, 2, None), slice(0, 3, None)), (slice(2, 4, None), slice(0, 3, None)), \
(slice(3, 5, None), slice(0, 3, None))]
    """
    if len(window) != len(shape):
        raise ValueError(f"window {tuple(window)} does not match the image's shape {tuple(shape)}")
    axes = []
    for n, w in zip(shape, window, strict=True):
        w = min(int(w), int(n))
        if w < 1:
            raise ValueError(f"window {tuple(window)} must be at least 1 pixel per axis")
        axes.append([slice(min(i * w, n - w), min(i * w, n - w) + w)
                     for i in range(math.ceil(n / w))])
    return list(itertools.product(*axes))


def _count_objects(block) -> int:
    ids = np.unique(np.asarray(block))
    return int(np.count_nonzero(ids))


def _pick_windows(tiles, truth, windows: int, placement: str):
    if len(tiles) <= windows:
        return tiles
    if placement == "even":
        picked = np.unique(np.round(np.linspace(0, len(tiles) - 1, windows)).astype(int))
        return [tiles[i] for i in picked]
    import dask

    counts = dask.compute(*[dask.delayed(_count_objects)(truth[t]) for t in tiles],
                          scheduler="threads")
    picked = sorted(sorted(range(len(tiles)), key=lambda i: (-counts[i], i))[:windows])
    return [tiles[i] for i in picked]


def tune_stores(pairs, *, objective: str = "mean_ap", start: SegmentParams = SegmentParams(),
                spacing: Sequence[float] | None = None,
                search: TuneSearch | Mapping | None = None, windows: int = 4,
                window: Sequence[int] | None = None, margin: int | Sequence[int] = 16,
                placement: str = "objects", progress: bool = True) -> TuneResult:
    """:func:`tune_params` on a few windows of images too large to hold.

    From every image, up to ``windows`` windows are read lazily (only their
    chunks) and tuned on together with :func:`tune_params`'s search.

    Parameters
    ----------
    pairs : sequence of (path, path) or (path, path, region)
        ``(probabilities, truth)`` per image: a probability store as ``unetpipe
        predict`` writes it (OME-Zarr or Zarr, axes ``c(z)yx``, K = 2 or 3
        classes, floats in [0, 1]) and the true instance labels of the same
        spatial shape (TIFF, Zarr or OME-Zarr), read with
        :func:`unetpipe.io.images.read_image` and ``read_labels``. A third
        item, ``(start, stop)`` per spatial axis, limits the windows to that
        box (the part of a training image that training held out); its edges
        inside the image are cuts like a window's.
    objective, start, search, progress
        As for :func:`tune_params`.
    spacing : sequence of float, optional
        Pixel size per spatial axis for all images; by default each
        probability store's own where it is calibrated, pixels otherwise
        (as :func:`unetpipe.stages.segment.segment_store` does).
    windows : int
        Most windows per image.
    window : sequence of int, optional
        Largest window per axis; default :data:`DEFAULT_WINDOW` (512 x 512 in
        2D, 32 x 256 x 256 in 3D). An image no larger is taken whole.
    margin : int or sequence of int
        Pixels of context per axis read around a window for segmenting it
        (clipped at the image's edge), so that the window's objects are
        segmented as in the whole image (exactly for components and class
        seeds, whose reach is a few pixels; distance seeds see further); only
        the window is scored.
    placement : {"objects", "even"}
        ``"objects"``: the image is tiled by windows (:func:`window_grid`)
        and the ``windows`` tiles with the most distinct true objects are
        taken (ties: the first in raster order); this reads the truth once,
        tile by tile. ``"even"``: tiles evenly spaced in raster order (the
        diagonal of a square grid), nothing read beforehand.

    Returns
    -------
    TuneResult

    Notes
    -----
    Objects cut by a window's edge inside the image are left out of the
    scores: every true object touching such an edge, whatever the settings
    (so all settings are scored on the same objects), and every predicted
    object that shares more pixels with those than with the scored objects,
    or touches such an edge and shares no pixel with a scored object. The
    image's own edges are no cut: a window that covers the whole image is
    scored as :func:`tune_params` scores the whole arrays.

    Raises
    ------
    InputError
        For a store that is not class probabilities, or truth of another shape.
    """
    from ..io.images import read_image, read_labels

    pairs = list(pairs)
    if not pairs:
        raise ValueError("no (probabilities, truth) pairs to tune on")
    if placement not in ("objects", "even"):
        raise ConfigError(f"config key 'tune.placement': {placement!r} is not 'objects' or "
                          "'even'")
    if int(windows) < 1:
        raise ConfigError(f"config key 'tune.windows': {windows!r} must be at least 1")
    cases = []
    for pair in pairs:
        prob_path, truth_path = pair[0], pair[1]
        region = pair[2] if len(pair) > 2 else None
        img = read_image(prob_path)
        if "c" not in img.axes or np.dtype(img.data.dtype).kind != "f":
            raise InputError(img.path, f"holds {img.data.dtype} values with axes {img.axes}; "
                                       "expected class probabilities written by unetpipe predict")
        try:
            mode_of(img.data.shape[0])
        except ValueError as e:
            raise InputError(img.path, str(e)) from None
        truth = read_labels(truth_path)
        shape = img.spatial_shape
        if tuple(truth.data.shape) != tuple(shape):
            raise InputError(truth.path, f"labels of shape {tuple(truth.data.shape)} do not match "
                                         f"the probabilities' spatial shape {tuple(shape)} "
                                         f"({os.fspath(prob_path)})")
        ndim = len(shape)
        size = DEFAULT_WINDOW[ndim] if window is None else tuple(window)
        pad = (int(margin),) * ndim if np.ndim(margin) == 0 else tuple(int(m) for m in margin)
        if len(pad) != ndim or min(pad) < 0:
            raise ValueError(f"margin {margin!r} must be one non-negative number per axis "
                             f"({ndim})")
        px = spacing if spacing is not None else (tuple(img.spacing) if img.unit else None)
        box = [(0, n) for n in shape] if region is None else [(int(a), int(b)) for a, b in region]
        if len(box) != ndim or any(not 0 <= a < b <= n for (a, b), n in zip(box, shape,
                                                                          strict=True)):
            raise ValueError(f"region {region!r} is not a box inside the image's shape "
                             f"{tuple(shape)}")
        tiles = [tuple(slice(s.start + a, s.stop + a) for s, (a, _) in zip(t, box, strict=True))
                 for t in window_grid([b - a for a, b in box], size)]
        for tile in _pick_windows(tiles, truth.data, int(windows), placement):
            outer = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                          for s, m, n in zip(tile, pad, shape, strict=True))
            core = tuple(slice(s.start - o.start, s.stop - o.start)
                         for s, o in zip(tile, outer, strict=True))
            cut = tuple((s.start > 0, s.stop < n) for s, n in zip(tile, shape, strict=True))
            probs = np.asarray(img.data[(slice(None), *outer)].compute())
            labels = np.asarray(truth.data[tile].compute())
            cases.append(_case(probs, labels, core=core, cut=cut, spacing=px,
                               where=f"{os.fspath(prob_path)}: "))
    return _search(cases, objective=objective, start=start, search=_search_settings(search),
                   progress=progress)


# --- the tune stage: a checkpoint's settings, stored with it ----------------------------

CHECKPOINT_KEY = SEGMENT_PARAMS
"""The checkpoint entry (and probability-store attribute) holding the tuned settings."""


def tuned_summary(result: TuneResult, *, start: SegmentParams, validation: Sequence[str],
                  checkpoint: str | None = None) -> dict:
    """What is stored with a model: the chosen settings, their score and the start's.

    Plain values (no history), for a checkpoint loaded with
    ``weights_only=True``, a YAML file and a Zarr attribute.
    """
    return {"params": asdict(result.params), "score": round(float(result.score), 6),
            "defaults": asdict(start), "defaults_score": round(float(result.defaults_score), 6),
            "objective": result.objective, "n_tried": int(result.n_tried),
            "seconds": round(float(result.seconds), 2), "validation": list(validation),
            "checkpoint": checkpoint}


def write_tuned(summary: Mapping, path: str | os.PathLike) -> None:
    """``segment_params.yaml``: the summary as YAML, written atomically."""
    import yaml

    from ..io.images import atomic_output

    text = ("# unetpipe: segmentation settings chosen by `unetpipe tune` on validation images.\n"
            "# `unetpipe segment --params` and the workflow use them for every segment setting\n"
            "# the config leaves at null.\n")
    text += yaml.safe_dump(dict(summary), sort_keys=False)
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def read_tuned(path: str | os.PathLike) -> dict | None:
    """The tuned settings summary of a ``segment_params.yaml``, a checkpoint or a
    bioimage.io package (None when a model holds none).

    Raises
    ------
    InputError
        A YAML file that is not what :func:`write_tuned` writes.
    """
    import yaml

    path = os.fspath(path)
    if path.endswith((".yaml", ".yml")):
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (OSError, yaml.YAMLError) as e:
            raise InputError(path, f"cannot read the tuned settings: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            raise InputError(path, "holds no 'params' mapping; expected the segment_params.yaml "
                                   "that `unetpipe tune` writes")
    else:
        from ..nn.models import load_checkpoint

        data = load_checkpoint(path).get(CHECKPOINT_KEY)
        if data is None:
            return None
    try:
        _params(data["params"])
    except ValueError as e:
        raise InputError(path, f"tuned settings: {e}") from None
    return dict(data)


def tuned_of_store(path: str | os.PathLike) -> dict | None:
    """The tuned settings a probability store carries (from the checkpoint that
    predicted it), or None."""
    from pathlib import Path

    from ..io.images import group_attributes

    data = ((group_attributes(Path(os.fspath(path))) or {}).get("unetpipe") or {}).get(
        CHECKPOINT_KEY)
    return dict(data) if isinstance(data, dict) and isinstance(data.get("params"), dict) \
        else None


def segment_settings(section: Mapping, tuned: Mapping | None, where: str | os.PathLike
                     ) -> tuple[SegmentParams, str]:
    """The settings to segment with (:func:`unetpipe.stages.instances.resolve_params`)
    from a config section and a tuned summary (:func:`read_tuned`) read from
    ``where``, and one line for the log saying where each came from."""
    from .instances import describe_sources, resolve_params

    params, sources = resolve_params(section, None if tuned is None else tuned["params"])
    line = describe_sources(params, sources)
    if tuned is not None:
        line += (f"; tuned values from {os.fspath(where)} ({tuned.get('objective')} "
                 f"{tuned.get('score')})")
    return params, line


@dataclass(frozen=True)
class TuneRun:
    """What :func:`tune_checkpoint` did."""

    result: TuneResult
    summary: dict
    output: str
    params_path: str | None
    validation: list[str]
    held_out: str  # "validation images", "held-out images", "held-out slab", "training images"


def _validation_sources(ckpt: Mapping, val_stores, train_stores) -> tuple[list, str]:
    """``[(store, region or None)]`` to tune on, and what they are."""
    from ..inputs.samples import sample_name

    if val_stores:
        return [(os.fspath(v), None) for v in val_stores], "validation images"
    data = ckpt.get("data") or {}
    by_name = {sample_name(t): os.fspath(t) for t in train_stores}
    region = data.get("val_region")
    if isinstance(region, Mapping) and region.get("sample") in by_name:
        return [(by_name[region["sample"]], region["box"])], "held-out slab"
    held = [by_name[n] for n in data.get("val") or [] if n in by_name]
    if held:
        return [(h, None) for h in held], "held-out images"
    if train_stores:
        return [(os.fspath(t), None) for t in train_stores], "training images"
    raise ConfigError("nothing to tune on: give validation images (data.val, or --val-images) "
                      "or the training images the model was trained on (--train-images)")


def tune_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *,
                    params_path: str | os.PathLike | None = None,
                    val_stores: Sequence[str | os.PathLike] = (),
                    train_stores: Sequence[str | os.PathLike] = (),
                    section: Mapping | None = None, objective: str = "mean_ap",
                    windows: int = 4, window: Sequence[int] | None = None,
                    predict: Mapping | None = None, execution=None,
                    progress: bool = True) -> TuneRun:
    """The tune stage: predict validation images, search the settings, store them.

    Parameters
    ----------
    checkpoint : path
        The trained model (``checkpoint_best.pt``).
    output : path
        The checkpoint written: ``checkpoint``'s contents with the tuned
        settings under :data:`CHECKPOINT_KEY`.
    params_path : path, optional
        Also write the settings as YAML (``segment_params.yaml``).
    val_stores : sequence of path
        Preprocessed stores with labels (``labels/gt``) to tune on.
    train_stores : sequence of path
        Without ``val_stores``: the training images' preprocessed stores, of
        which the ones training held out (recorded in the checkpoint: whole
        images, or the slab of a single image) are tuned on; when training
        held nothing out, all of them (the scores are then optimistic, and the
        log says so).
    section : mapping, optional
        The config's ``segment`` section: the search starts from its
        settings (null ones at their built-in defaults), and a ``method`` or
        ``seeds`` it sets limits the search to that method or those seeds;
        the other settings it sets are held (:attr:`TuneSearch.fixed`).
    objective, windows, window
        As for :func:`tune_stores`.
    predict : mapping, optional
        Keyword arguments of :func:`unetpipe.stages.predict.predict_store`
        (``block``, ``halo``, ``halo_tolerance``, ``batch_size``, ``device``, ``bf16``,
        ``tta``),
        as the predict stage will use them.
    execution : unetpipe.core.cluster.Execution, optional
        Threads for the prediction.
    progress : bool

    Returns
    -------
    TuneRun
    """
    import logging
    import shutil
    from pathlib import Path

    from ..core.cluster import Execution
    from ..nn.checkpoint import save_checkpoint
    from ..nn.models import load_checkpoint
    from .instances import resolve_params
    from .predict import predict_store

    log = logging.getLogger("unetpipe")
    checkpoint, output = os.fspath(checkpoint), Path(os.fspath(output))
    section = dict(section or {})
    start, _ = resolve_params(section)
    # what the config sets is not searched: it wins over anything tuned
    search = TuneSearch(
        methods=(section["method"],) if section.get("method") else TuneSearch.methods,
        seeds=(section["seeds"],) if section.get("seeds") else TuneSearch.seeds,
        fixed=tuple(k for k in FIXABLE if section.get(k) is not None))
    _objective(objective)  # a bad objective fails before any prediction
    ckpt = load_checkpoint(checkpoint)
    sources, what = _validation_sources(ckpt, val_stores, train_stores)
    for store, _ in sources:
        if not os.path.isdir(os.path.join(store, "labels", "gt")):
            raise InputError(store, "has no ground-truth labels (labels/gt) to tune against; "
                                    "preprocess it with --labels")
    from ..inputs.samples import sample_name

    names = [sample_name(s) for s, _ in sources]
    if what == "training images":
        log.warning("tune: the model was trained on every image and none was held out; tuning "
                    "on the training images (%s), whose scores are optimistic. Give "
                    "validation images (data.val) for an honest calibration.", ", ".join(names))
    elif what != "validation images":
        log.info("tune: no validation images configured; tuning on the %s training held out: "
                 "%s%s", what, ", ".join(names),
                 "" if sources[0][1] is None else " " + box_text(sources[0][1]))
    work = output.parent / f".{output.name}.tune"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        pairs = []
        for (store, region), name in zip(sources, names, strict=True):
            probs = work / f"{name}.ome.zarr"
            predict_store(checkpoint, store, probs, **dict(predict or {}),
                          execution=execution or Execution(progress=progress))
            truth = os.path.join(store, "labels", "gt")
            pairs.append((os.fspath(probs), truth) if region is None
                         else (os.fspath(probs), truth, region))
        result = tune_stores(pairs, objective=objective, start=start, search=search,
                             windows=windows, window=window, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = tuned_summary(result, start=start, validation=names,
                            checkpoint=os.path.abspath(checkpoint))
    ckpt = dict(ckpt)
    ckpt[CHECKPOINT_KEY] = summary
    save_checkpoint(ckpt, output)
    if params_path is not None:
        write_tuned(summary, params_path)
    return TuneRun(result=result, summary=summary, output=os.fspath(output),
                   params_path=None if params_path is None else os.fspath(params_path),
                   validation=names, held_out=what)
