"""The evaluation stage: predicted labels scored against ground truth.

:func:`evaluate_store` scores one sample chunk by chunk, so a volume larger
than memory can be evaluated; :func:`write_metrics` writes its scores as
JSON, and :func:`summarize` gathers those files into one table with a
pooled row. The scores are defined in :mod:`unetpipe.stages.metrics`; the JSON
keeps their raw counts and sums, so the pooled row is exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, InputError
from ..io.images import atomic_output, checked_labels, read_labels
from .metrics import (
    DEFAULT_THRESHOLDS,
    Scores,
    _check_thresholds,
    overlap_counts,
    pool_scores,
    score_overlaps,
)

log = logging.getLogger(__name__)

POOLED = "pooled"
"""The ``sample`` of the summary's last row: all samples pooled."""


def evaluate_store(labels_path: str | os.PathLike, truth_path: str | os.PathLike, *,
                   thresholds: Iterable[float] = DEFAULT_THRESHOLDS, threads: int | None = None,
                   progress: str | None = "evaluate") -> Scores:
    """Score predicted labels against ground truth, chunk by chunk.

    Parameters
    ----------
    labels_path : str or os.PathLike
        The predicted labels: an OME-Zarr labels store (level 0 is read), or
        anything else :func:`unetpipe.io.images.read_labels` reads.
    truth_path : str or os.PathLike
        The ground truth, e.g. the labels group
        ``results/preprocessed/NAME.ome.zarr/labels/gt``.
    thresholds : iterable of float
        IoU thresholds, in (0, 1]; see :func:`unetpipe.stages.metrics.score`.
    threads : int, optional
        Dask threads; by default the scheduler Dask is configured with.
    progress : str or None
        Label of the progress bar over the chunks; None for none.

    Returns
    -------
    Scores
        Equal to :func:`unetpipe.stages.metrics.score` on the two arrays in memory.

    Raises
    ------
    InputError
        When a file is missing or unreadable, or the shapes differ (the
        message names the predicted labels and both shapes).
    """
    thresholds = _check_thresholds(thresholds)  # before any pixel is read
    pred = read_labels(labels_path)
    truth = read_labels(truth_path)
    if tuple(pred.data.shape) != tuple(truth.data.shape):
        raise InputError(labels_path, f"predicted labels of shape {tuple(pred.data.shape)} "
                                      f"do not match the ground truth {truth.path} of shape "
                                      f"{tuple(truth.data.shape)}")
    if pred.unit and truth.unit and not np.allclose(pred.spacing, truth.spacing):
        log.warning("%s: pixel size %s differs from the ground truth's %s (%s); scoring the "
                    "pixels as they are", pred.path, pred.spacing, truth.spacing, truth.path)
    overlaps = overlap_counts(checked_labels(truth), checked_labels(pred), threads=threads,
                              progress=progress)
    return score_overlaps(*overlaps, thresholds=thresholds)


def _jsonable(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")


def write_metrics(path: str | os.PathLike, scores: Scores, *, sample: str,
                  extra: Mapping | None = None) -> Path:
    """Write one sample's scores as JSON, atomically.

    The file holds ``{"sample": sample, "scores": scores.to_dict(),
    "extra": extra}``; :meth:`Scores.from_dict` reads ``"scores"`` back
    exactly. It is written to a temporary file in the same folder and
    renamed into place, so a metrics file that exists is whole.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, e.g. ``results/metrics/NAME.json``.
    scores : Scores
    sample : str
        The sample's name (not ``"pooled"``, which the summary reserves).
    extra : mapping, optional
        JSON-serialisable provenance, e.g. the input paths; paths are
        written as strings.

    Returns
    -------
    pathlib.Path
    """
    if sample == POOLED:
        raise ConfigError(f"sample name {POOLED!r} is taken by the summary's pooled row; "
                          "rename the image")
    payload = {"sample": str(sample), "scores": scores.to_dict(), "extra": dict(extra or {})}
    text = json.dumps(payload, indent=2, allow_nan=False, default=_jsonable)
    with atomic_output(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(os.fspath(path))


def _ap_column(t: float) -> str:
    return f"ap_{t:.2f}" if round(t, 2) == t else f"ap_{t:g}"


def summary_columns(thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> list[str]:
    """The columns of :func:`summarize`'s table for these IoU thresholds."""
    return (["sample", "images", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall",
             "f1"] + [_ap_column(t) for t in thresholds]
            + ["mean_ap", "panoptic_quality", "mean_matched_iou", "seg"])


def _row(sample: str, s: Scores) -> dict:
    t = s.thresholds[0]
    tp, fp, fn = s.counts(t)
    row = {"sample": sample, "images": s.images, "n_true": s.n_true, "n_pred": s.n_pred,
           "tp": tp, "fp": fp, "fn": fn, "precision": s.precision(t), "recall": s.recall(t),
           "f1": s.f1(t)}
    row.update({_ap_column(u): s.ap(u) for u in s.thresholds})
    row.update({"mean_ap": s.mean_ap, "panoptic_quality": s.panoptic_quality,
                "mean_matched_iou": s.mean_matched_iou,
                "seg": s.seg if s.n_true else math.nan})
    return row


def _read_metrics(path: str | os.PathLike) -> tuple[str, Scores]:
    try:
        d = json.loads(Path(os.fspath(path)).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable JSON file ({e})") from None
    try:
        return str(d["sample"]), Scores.from_dict(d["scores"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(path, f"not a metrics file from write_metrics ({e})") from None


def summarize(json_paths: Iterable[str | os.PathLike], out_csv: str | os.PathLike):
    """Gather per-sample metrics files into one table, with a pooled last row.

    Parameters
    ----------
    json_paths : iterable of str or os.PathLike
        Files from :func:`write_metrics`, one per sample, all scored at the
        same IoU thresholds. Rows keep their order.
    out_csv : str or os.PathLike
        The table, e.g. ``results/metrics/summary.csv``, written atomically.

    Returns
    -------
    pandas.DataFrame
        One row per sample, then the row ``sample == "pooled"``: counts and
        sums of all samples added up and the scores computed from them
        (:func:`unetpipe.stages.metrics.pool_scores`), not the samples' scores
        averaged. Columns: see :func:`summary_columns`; ``tp``, ``fp``,
        ``fn``, ``precision``, ``recall`` and ``f1`` are at the first
        threshold (IoU 0.5 by default), ``seg`` is empty (NaN) without
        ground-truth objects.

    Raises
    ------
    InputError
        For an unreadable file, a sample named twice or ``"pooled"``, or
        files scored at different thresholds.
    ValueError
        When ``json_paths`` is empty.
    """
    import pandas as pd

    rows, scores, seen, first = [], [], {}, None
    for path in json_paths:
        sample, s = _read_metrics(path)
        if sample == POOLED or sample in seen:
            other = f" (also in {seen[sample]})" if sample in seen else ""
            raise InputError(path, f"sample name {sample!r} cannot be used in the summary{other}")
        if first is None:
            first = (path, s.thresholds)
        elif s.thresholds != first[1]:
            raise InputError(path, f"scored at IoU thresholds {s.thresholds}, but {first[0]} at "
                                   f"{first[1]}: they cannot be pooled")
        seen[sample] = os.fspath(path)
        rows.append(_row(sample, s))
        scores.append(s)
    if not scores:
        raise ValueError("no metrics files to summarize")
    rows.append(_row(POOLED, pool_scores(scores)))
    table = pd.DataFrame(rows, columns=summary_columns(first[1]))
    with atomic_output(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
