"""The review queue: objects of a measurement table worth a look, and the
boxes and centres the widget moves the view to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def review_queue(table, *, size_mad: float = 3.0, min_probability: float = 0.5,
                 min_solidity: float = 0.85, seams: bool = True, border: bool = True):
    """Objects worth a look, with the reasons.

    Parameters
    ----------
    table : pandas.DataFrame
        A measurement table (:func:`unetpipe.stages.measure.measure_store`).
    size_mad : float
        An object is a size outlier when its log size lies more than this
        many (normal-scaled) median absolute deviations from the median log
        size; 0 or less switches the check off.
    min_probability : float
        Flag a ``mean_probability`` below this (when the column exists).
    min_solidity : float
        Flag a ``solidity`` below this (2D tables; 0 = off).
    seams : bool
        Flag objects that cross chunk seams (``n_chunks > 1``): they were
        joined by stitching.
    border : bool
        Flag objects touching the image border.

    Returns
    -------
    pandas.DataFrame
        The flagged rows of ``table`` with a ``reasons`` column
        (comma-separated: ``small``, ``large``, ``low probability``,
        ``low solidity``, ``seam``, ``border``), most reasons first, then by
        label.
    """
    import pandas as pd

    size_col = "area" if "area" in table.columns else "volume"
    reasons = [[] for _ in range(len(table))]

    def flag(mask, why):
        for i in np.flatnonzero(np.asarray(mask, bool)):
            reasons[i].append(why)

    if size_mad > 0 and len(table) >= 3:
        logs = np.log(np.maximum(table[size_col].to_numpy(float), 1e-12))
        med = np.median(logs)
        mad = 1.4826 * np.median(np.abs(logs - med))
        if mad > 0:
            flag(logs < med - size_mad * mad, "small")
            flag(logs > med + size_mad * mad, "large")
    if "mean_probability" in table.columns and min_probability > 0:
        flag(table["mean_probability"].to_numpy(float) < min_probability, "low probability")
    if "solidity" in table.columns and min_solidity > 0:
        flag(table["solidity"].to_numpy(float) < min_solidity, "low solidity")
    if seams and "n_chunks" in table.columns:
        flag(table["n_chunks"].to_numpy(int) > 1, "seam")
    if border and "touches_border" in table.columns:
        flag(table["touches_border"].astype(str).str.lower().isin(["true", "1"]), "border")
    out = table.assign(reasons=[", ".join(r) for r in reasons],
                       _n=[len(r) for r in reasons])
    out = out[out["_n"] > 0].sort_values(["_n", "label"], ascending=[False, True],
                                         kind="stable")
    return pd.DataFrame(out.drop(columns="_n")).reset_index(drop=True)


def object_box(row: Mapping, *, spacing: Sequence[float]) -> tuple[slice, ...]:
    """The index box of an object from its table row (``bbox_min_*``, ``bbox_max_*``)."""
    axes = "zyx"[-len(spacing):]
    return tuple(slice(round(float(row[f"bbox_min_{a}"]) / s),
                       round(float(row[f"bbox_max_{a}"]) / s))
                 for a, s in zip(axes, spacing, strict=True))


def object_centre(row: Mapping, *, ndim: int) -> tuple[float, ...]:
    """An object's centroid in world (physical) coordinates, (z,) y, x."""
    return tuple(float(row[f"centroid_{a}"]) for a in "zyx"[-ndim:])


def snap_box(box: Sequence[slice], *, shape: Sequence[int], chunks: Sequence[int],
             margin: int = 0) -> tuple[slice, ...]:
    """Grow a box by ``margin`` pixels, snap it outwards to the chunk grid, clip to ``shape``.

    Examples
    --------
    >>> snap_box((slice(5, 9), slice(0, 3)), shape=(20, 10), chunks=(4, 4), margin=1)
    (slice(4, 12, None), slice(0, 4, None))
    """
    out = []
    for s, n, c in zip(box, shape, chunks, strict=True):
        start = max(0, (max(0, s.start - margin) // c) * c)
        stop = min(n, math.ceil(min(n, s.stop + margin) / c) * c)
        out.append(slice(start, stop))
    return tuple(out)


def union_box(boxes: Iterable[Sequence[slice]]) -> tuple[slice, ...]:
    """The smallest box holding all ``boxes``."""
    boxes = list(boxes)
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes))
                 for i in range(len(boxes[0])))


def contains(outer: Sequence[slice], inner: Sequence[slice]) -> bool:
    """Whether box ``inner`` lies inside box ``outer``."""
    return all(o.start <= i.start and i.stop <= o.stop
               for o, i in zip(outer, inner, strict=True))
