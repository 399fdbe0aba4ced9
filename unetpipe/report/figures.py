"""Figures and tables for ``snakemake --report``.

The pure functions compose arrays and tables (:func:`overlay_rgb`,
:func:`best_window`, :func:`border_from_weights`, :func:`runtime_table`, the
``*_html`` functions); the ``write_*`` functions read the stores lazily
(a coarse pyramid level and one full-resolution crop, never a whole stack)
and write PNG or HTML files atomically. Snakemake's HTML report shows PNG
images as pictures and HTML pages in a frame; everything else would only be
a download link.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io.images import atomic_output

# names unetpipe as the maker, so a rerun recognises its own figure (io.outputs)
PNG_METADATA = {"Software": "unetpipe"}

PRED_COLOUR = (1.0, 0.0, 1.0)
"""Outlines of the predicted objects: magenta."""
TRUTH_COLOUR = (0.0, 1.0, 0.0)
"""Outlines of the ground-truth objects: green."""
BOTH_COLOUR = (1.0, 1.0, 1.0)
"""Pixels on both outlines: white."""

BENCHMARK_COLUMNS = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in",
                     "io_out", "mean_load", "cpu_time")
"""The columns of a Snakemake ``benchmark:`` file (times in s, memory in MB)."""

METRIC_DEFINITIONS = {
    "sample": "the image; 'pooled' adds the counts of all images, then computes the scores",
    "images": "number of images in the row",
    "n_true": "number of ground-truth objects",
    "n_pred": "number of predicted objects",
    "tp": "true positives: objects matched one to one (optimal assignment) at IoU >= 0.5",
    "fp": "false positives: predicted objects without a match, n_pred - TP",
    "fn": "false negatives: true objects without a match, n_true - TP",
    "precision": "TP / (TP + FP) at IoU 0.5",
    "recall": "TP / (TP + FN) at IoU 0.5",
    "f1": "2 TP / (2 TP + FP + FN) at IoU 0.5",
    "ap_t": "AP(t) = TP / (TP + FP + FN) with matches at IoU >= t (the Data Science Bowl's, "
            "StarDist's and Cellpose's 'average precision', not COCO's)",
    "mean_ap": "mean of AP(t) over the thresholds t = 0.50, 0.55, ..., 0.95",
    "panoptic_quality": "sum of the matched IoUs / (TP + FP/2 + FN/2) at IoU 0.5 "
                        "(mean matched IoU x F1)",
    "mean_matched_iou": "mean IoU of the matched pairs at IoU 0.5",
    "seg": "Cell Tracking Challenge SEG: mean over true objects of the IoU with the predicted "
           "object covering more than half of it (0 if none); empty without true objects",
}

_CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; background: #f6f6f6; }
pre { background: #f6f6f6; padding: 0.8em; border: 1px solid #ddd; font-size: 13px; }
dt { font-family: monospace; font-weight: bold; }
dd { margin: 0 0 0.4em 1.5em; }
.scroll { overflow-x: auto; }
"""


# --- pure functions: arrays ---------------------------------------------------------


def normalize_gray(image, *, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """An image scaled to [0, 1] between two percentiles, for display.

    Parameters
    ----------
    image : ndarray of shape (M, N)
    percentiles : tuple of float
        The low and high percentile, mapped to 0 and 1.

    Returns
    -------
    ndarray of shape (M, N), float32
    """
    image = np.asarray(image, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, np.float32)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def overlay_rgb(image, labels, truth=None) -> np.ndarray:
    """An image in grey with the outlines of its objects in colour.

    Parameters
    ----------
    image : ndarray of shape (M, N)
        Intensities, scaled by :func:`normalize_gray` to [0, 0.8].
    labels : ndarray of shape (M, N)
        Predicted instance labels (0 = background); their outlines (the
        object pixels of :func:`skimage.segmentation.find_boundaries` with
        ``mode="inner"``) are drawn in :data:`PRED_COLOUR`.
    truth : ndarray of shape (M, N), optional
        Ground-truth instance labels; their outlines are drawn in
        :data:`TRUTH_COLOUR`, and pixels on both outlines in
        :data:`BOTH_COLOUR`.

    Returns
    -------
    ndarray of shape (M, N, 3), float32 in [0, 1]

    Examples
    --------
    >>> labels = np.zeros((5, 5), int); labels[1:4, 1:4] = 1
    >>> rgb = overlay_rgb(np.zeros((5, 5)), labels)
    >>> rgb[2, 2].tolist(), rgb[1, 1].tolist()
    ([0.0, 0.0, 0.0], [1.0, 0.0, 1.0])
    """
    from skimage.segmentation import find_boundaries

    gray = normalize_gray(image)
    # dimmed, so that white outlines stand out on bright objects
    rgb = np.repeat(0.8 * gray[..., None], 3, axis=-1)
    pred = find_boundaries(np.asarray(labels), mode="inner")
    if truth is not None:
        true = find_boundaries(np.asarray(truth), mode="inner")
        rgb[true] = TRUTH_COLOUR
        rgb[pred & true] = BOTH_COLOUR
        pred = pred & ~true
    rgb[pred] = PRED_COLOUR
    return rgb


def best_window(score, size: Sequence[int]) -> tuple[int, int]:
    """The top-left corner of the window with the largest summed score.

    Parameters
    ----------
    score : ndarray of shape (M, N)
        Non-negative score per pixel (e.g. object outlines).
    size : sequence of two int
        Window height and width, clipped to the image.

    Returns
    -------
    tuple of int
        ``(row, column)`` of the window's corner; the first best one in
        row-major order, ``(0, 0)`` when the score is zero everywhere.

    Examples
    --------
    >>> s = np.zeros((6, 6)); s[4, 5] = 1
    >>> best_window(s, (2, 2))
    (3, 4)
    """
    score = np.asarray(score, dtype=np.float64)
    h, w = (min(int(n), m) for n, m in zip(size, score.shape, strict=True))
    table = np.zeros((score.shape[0] + 1, score.shape[1] + 1))
    table[1:, 1:] = score.cumsum(0).cumsum(1)
    sums = table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def border_from_weights(targets, weights, class_weights: Sequence[float]) -> np.ndarray:
    """The border term B of a stored weight map: the weights less their class weights.

    (:func:`unetpipe.weights.border_term` computes B from the labels; here it
    is read back from what the targets stage wrote, with no distance
    transforms.)

    Parameters
    ----------
    targets : ndarray of int
        Class of every pixel (as in ``results/targets/NAME.zarr/targets``).
    weights : ndarray of float, same shape
        The weight map ``w_c + B``.
    class_weights : sequence of float
        ``w_c`` of each class.

    Returns
    -------
    ndarray of float32, same shape
        ``weights - class_weights[targets]``, clipped at 0.
    """
    wc = np.asarray(class_weights, dtype=np.float32)[np.asarray(targets, dtype=np.intp)]
    return np.clip(np.asarray(weights, dtype=np.float32) - wc, 0.0, None)


# --- pure functions: tables -----------------------------------------------------------


def _template_regex(template: str) -> re.Pattern:
    """A benchmark path template (``results/benchmarks/x/{sample}.tsv``) as a regex."""
    parts = re.split(r"\{[^{}]*\}", os.path.normpath(template))
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + r"\Z")


def rule_of(path: str | os.PathLike, root: str | os.PathLike,
            templates: Mapping[str, str] | None = None) -> str:
    """The rule that wrote a benchmark file.

    Parameters
    ----------
    path : str or os.PathLike
        A benchmark file below ``root``.
    root : str or os.PathLike
        The benchmarks folder, e.g. ``results/benchmarks``.
    templates : mapping of str to str, optional
        Rule name -> its ``benchmark:`` path with wildcards; the matching
        template with the fewest wildcards names the rule (so that
        ``evaluate/summary.tsv`` beats ``evaluate/{sample}.tsv``).

    Returns
    -------
    str
        The matching rule; else the first folder below ``root``
        (``preprocess/NAME.tsv`` -> ``preprocess``), or the file name without
        ``.tsv`` for a file directly in ``root``.
    """
    path = os.path.normpath(os.fspath(path))
    for name, template in sorted((templates or {}).items(), key=lambda t: t[1].count("{")):
        if _template_regex(template).match(path):
            return name
    rel = Path(os.path.relpath(path, os.fspath(root)))
    return rel.parts[0] if len(rel.parts) > 1 else rel.name.removesuffix(".tsv")


def runtime_table(runs):
    """Wall time, CPU time and peak memory per rule, from benchmark records.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per job with columns ``rule``, ``s`` (wall seconds),
        ``cpu_time`` (CPU seconds) and ``max_rss`` (MB); missing values
        (NaN) are skipped.

    Returns
    -------
    pandas.DataFrame
        One row per rule, sorted by total wall time (longest first), with
        columns ``rule``, ``jobs``, ``wall_s`` (sum), ``max_wall_s``,
        ``cpu_s`` (sum) and ``peak_rss_mb`` (maximum).
    """
    import pandas as pd

    cols = ["rule", "jobs", "wall_s", "max_wall_s", "cpu_s", "peak_rss_mb"]
    if len(runs) == 0:
        return pd.DataFrame(columns=cols)
    table = runs.groupby("rule", sort=True).agg(
        jobs=("s", "size"), wall_s=("s", "sum"), max_wall_s=("s", "max"),
        cpu_s=("cpu_time", "sum"), peak_rss_mb=("max_rss", "max")).reset_index()
    return table.sort_values("wall_s", ascending=False, kind="stable")[cols].reset_index(
        drop=True)


def _cell(value, digits: int) -> str:
    if isinstance(value, str):
        return f"<td>{html.escape(value)}</td>"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num"></td>'
    if isinstance(value, int | np.integer):
        return f'<td class="num">{int(value)}</td>'
    return f'<td class="num">{float(value):.{digits}f}</td>'


def table_html(table, *, digits: int = 3, total_row: str | None = None,
               headers: Mapping[str, str] | None = None) -> str:
    """A table as an HTML ``<table>``, numbers right-aligned.

    Parameters
    ----------
    table : pandas.DataFrame
    digits : int
        Decimals of floating-point values.
    total_row : str, optional
        Rows whose first cell equals this are shown in bold.
    headers : mapping of str to str, optional
        Column name -> header text.

    Returns
    -------
    str
    """
    headers = headers or {}
    head = "".join(f"<th>{html.escape(headers.get(c, str(c)))}</th>" for c in table.columns)
    rows = []
    for rec in table.itertuples(index=False):
        cls = ' class="total"' if total_row is not None and rec[0] == total_row else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(v, digits) for v in rec) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def html_page(title: str, body: str) -> str:
    """A small stand-alone HTML page with the report's style.

    Parameters
    ----------
    title : str
        Plain text, escaped.
    body : str
        HTML.

    Returns
    -------
    str
    """
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f'<meta name="generator" content="unetpipe"><title>{html.escape(title)}'
            f"</title><style>{_CSS}</style></head>\n<body><h2>{html.escape(title)}</h2>\n"
            f"{body}\n</body></html>\n")


def runtime_html(table) -> str:
    """The page of :func:`runtime_table`, with a total row.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`runtime_table`.

    Returns
    -------
    str
        HTML; the total row adds jobs, wall and CPU times and takes the
        maxima of the longest job and the peak RSS.
    """
    import pandas as pd

    total = pd.DataFrame([{"rule": "all rules", "jobs": int(table["jobs"].sum()),
                           "wall_s": table["wall_s"].sum(),
                           "max_wall_s": table["max_wall_s"].max(),
                           "cpu_s": table["cpu_s"].sum(),
                           "peak_rss_mb": table["peak_rss_mb"].max()}])
    shown = pd.concat([table, total], ignore_index=True) if len(table) else table
    headers = {"rule": "rule", "jobs": "jobs", "wall_s": "wall time, total (s)",
               "max_wall_s": "wall time, longest job (s)", "cpu_s": "CPU time, total (s)",
               "peak_rss_mb": "peak RSS (MB)"}
    note = ("<p>From the <code>benchmark:</code> files of the jobs (the latest run of each); "
            "the total wall time adds up jobs that may have run in parallel. Peak RSS is the "
            "largest resident memory of one job of the rule.</p>")
    return html_page("Runtime and memory per rule",
                     note + table_html(shown, digits=1, total_row="all rules", headers=headers))


def metrics_html(summary) -> str:
    """The evaluation summary (``summary.csv``) as a page with each column defined.

    Parameters
    ----------
    summary : pandas.DataFrame
        From :func:`unetpipe.stages.evaluate.summarize`: one row per sample, then
        the row ``pooled``.

    Returns
    -------
    str
        HTML.
    """
    defs = []
    for col in summary.columns:
        key = "ap_t" if col.startswith("ap_") else col
        if key in METRIC_DEFINITIONS and (key != "ap_t" or not defs or defs[-1][0] != "ap_t"):
            name = "ap_0.50 ... ap_0.95" if key == "ap_t" else col
            defs.append((key, f"<dt>{html.escape(name)}</dt><dd>"
                              f"{html.escape(METRIC_DEFINITIONS[key])}</dd>"))
    body = (table_html(summary, digits=3, total_row="pooled")
            + "<p>Objects are matched one to one by optimal assignment among the pairs with "
              "IoU &ge; t. See README.md, <i>Evaluation metrics</i>.</p>"
            + "<dl>" + "".join(d for _, d in defs) + "</dl>")
    return html_page("Segmentation scores against the ground truth", body)


def config_html(config: Mapping) -> str:
    """The resolved config as YAML on an HTML page.

    Parameters
    ----------
    config : mapping
        JSON-like values (others are written as strings).

    Returns
    -------
    str
        HTML; the YAML, unescaped, loads back to ``config``.
    """
    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    note = ("<p>The config this run used, after validation against the schema, every default "
            "filled in (<code>workflow/schemas/config.schema.yaml</code> describes each "
            "key).</p>")
    return html_page("Configuration", f"{note}<pre>{html.escape(text)}</pre>")


def tune_html(tuned: Mapping) -> str:
    """The tuned segmentation settings against the built-in defaults, as an HTML page.

    Parameters
    ----------
    tuned : mapping
        What the tune stage stores (``segment_params.yaml``): ``params``,
        ``defaults``, ``score``, ``defaults_score``, ``objective``,
        ``n_tried``, ``validation``.

    Returns
    -------
    str
    """
    params, defaults = dict(tuned.get("params") or {}), dict(tuned.get("defaults") or {})
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(repr(defaults.get(k)))}</td>"
        f"<td>{'<b>' if defaults.get(k) != v else ''}{html.escape(repr(v))}"
        f"{'</b>' if defaults.get(k) != v else ''}</td></tr>"
        for k, v in params.items())
    objective = html.escape(str(tuned.get("objective")))
    body = (f"<p>The segmentation settings the tune stage chose on "
            f"{html.escape(', '.join(tuned.get('validation') or []))}, out of "
            f"{tuned.get('n_tried')} tried; changed values in bold. Segment uses them for "
            f"every setting the config leaves at null.</p>"
            f"<table><tr><th>setting</th><th>built-in default</th><th>tuned</th></tr>{rows}"
            f"<tr><td>{objective}</td><td>{float(tuned.get('defaults_score', 'nan')):.4f}</td>"
            f"<td>{float(tuned.get('score', 'nan')):.4f}</td></tr></table>")
    return html_page("Segmentation settings tuned on the validation images", body)


def write_tune_html(tuned: Mapping, out) -> Path:
    """:func:`tune_html` written atomically to ``out``."""
    with atomic_output(out) as tmp:
        tmp.write_text(tune_html(tuned), encoding="utf-8")
    return Path(os.fspath(out))


# --- figures ----------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    plt = _pyplot()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata=PNG_METADATA)
    finally:
        plt.close(fig)
    return Path(os.fspath(path))


def _legend(fig, truth: bool) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=PRED_COLOUR, label="predicted")]
    if truth:
        handles += [Patch(color=TRUTH_COLOUR, label="ground truth"),
                    Patch(facecolor=BOTH_COLOUR, edgecolor="0.5", label="both")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)


def overlay_figure(panels: Sequence[tuple[np.ndarray, str]], *, title: str, truth: bool,
                   box: tuple[int, int, int, int] | None = None):
    """The gallery figure of one sample: RGB panels side by side, a legend.

    Parameters
    ----------
    panels : sequence of (ndarray of shape (M, N, 3), str)
        Images (from :func:`overlay_rgb`) and their titles.
    title : str
    truth : bool
        Whether ground-truth outlines are shown (for the legend).
    box : tuple of int, optional
        ``(row, column, height, width)`` of a rectangle drawn on the first
        panel (the crop, in that panel's pixels).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.2 * len(panels), 8), 5.8),
                             squeeze=False)
    for ax, (rgb, name) in zip(axes[0], panels, strict=True):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if box is not None:
        y, x, h, w = box
        axes[0, 0].add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="yellow",
                                       linewidth=1.5))
    fig.suptitle(title, fontsize=11)
    _legend(fig, truth)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def weightmap_figure(image, truth, targets, weights, *, classes: Sequence[str], w0: float,
                     sigma: float, unit: str | None = None, title: str = ""):
    """The weight-map figure: image with ground truth, targets, weight map.

    Parameters
    ----------
    image, truth, targets, weights : ndarray of shape (M, N)
        A crop of the image, its instance labels, the training targets
        (class per pixel) and the weight map.
    classes : sequence of str
        Name of each target class.
    w0, sigma : float
        The border term's settings, for the title.
    unit : str, optional
        Unit of sigma (pixels when None).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 5.0))
    axes[0].imshow(overlay_rgb(image, np.zeros_like(truth), truth), interpolation="nearest")
    axes[0].set_title("image, ground-truth outlines", fontsize=10)
    shades = plt.get_cmap("gray")(np.linspace(0, 1, max(len(classes), 2)))[:len(classes)]
    axes[1].imshow(targets, cmap=ListedColormap(shades), vmin=-0.5,
                   vmax=len(classes) - 0.5, interpolation="nearest")
    axes[1].set_title("targets", fontsize=10)
    fig.legend(handles=[Patch(facecolor=c, edgecolor="0.5", label=f"target: {n}")
                        for c, n in zip(shades, classes, strict=True)],
               loc="lower center", ncol=len(classes), frameon=False, fontsize=9)
    shown = axes[2].imshow(weights, cmap="jet", interpolation="nearest")
    axes[2].set_title(f"weight map, w0 = {w0:g}, sigma = {sigma:g} "
                      f"{'px' if not unit else 'µm' if unit == 'micrometer' else unit}",
                      fontsize=10)
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


def runtime_figure(table):
    """Bar charts of total wall time and peak RSS per rule.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`runtime_table`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    rules = list(table["rule"])[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.35 * max(len(rules), 1)))
    for ax, col, label in ((axes[0], "wall_s", "wall time, all jobs (s)"),
                           (axes[1], "peak_rss_mb", "peak RSS of a job (MB)")):
        values = table[col].to_numpy(float)[::-1]
        ax.barh(rules, np.nan_to_num(values), color="tab:blue" if col == "wall_s" else
                "tab:orange")
        for i, v in enumerate(values):
            if np.isfinite(v):
                ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.margins(x=0.15)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    return fig


# --- reading and writing ---------------------------------------------------------------


def _plane(levels: list, index: int, *, ndim: int, z: float | None):
    level = levels[index]
    if level.ndim > ndim:  # a channel axis
        level = level[0]
    if ndim == 3:
        level = level[min(int(z * level.shape[0]), level.shape[0] - 1)]
    return level


def _levels(path) -> list:
    from ..io.images import image_pyramid

    data, multiscale, _ = image_pyramid(path)
    return list(data) if multiscale else [data]


def _coarse(levels: list, *, ndim: int, z: float | None, max_side: int):
    """The finest level whose plane fits ``max_side`` (strided further if none does),
    and its step relative to level 0."""
    full = _plane(levels, 0, ndim=ndim, z=z).shape
    for i in range(len(levels)):
        plane = _plane(levels, i, ndim=ndim, z=z)
        if max(plane.shape) <= max_side or i == len(levels) - 1:
            break
    extra = max(1, math.ceil(max(plane.shape) / max_side))
    plane = plane[::extra, ::extra]
    step = tuple(f / n for f, n in zip(full, plane.shape, strict=True))
    return plane, step


def _labels_like(levels: list, shape, step, *, ndim: int, z: float | None):
    """Labels at a coarse view's shape: a pyramid level of that shape, else level 0
    strided (nearest neighbour)."""
    for i in range(len(levels)):
        plane = _plane(levels, i, ndim=ndim, z=z)
        if plane.shape == tuple(shape):
            return plane
    plane = _plane(levels, 0, ndim=ndim, z=z)
    rows = np.minimum((np.arange(shape[0]) * step[0]).astype(int), plane.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * step[1]).astype(int), plane.shape[1] - 1)
    return plane[rows][:, cols]


def _metrics_text(path) -> str:
    from ..stages.metrics import Scores

    d = json.loads(Path(os.fspath(path)).read_text(encoding="utf-8"))
    s = Scores.from_dict(d["scores"])
    t = s.thresholds[0]
    return f"; AP@{t:g} {s.ap(t):.3f}, mean AP {s.mean_ap:.3f} ({s.n_true} true objects)"


def write_overlay(image_path, labels_path, out, *, truth_path=None, metrics_path=None,
                  sample: str | None = None, crop: int = 256, overview: int = 512) -> Path:
    """The gallery figure of one segmented sample, read lazily.

    A whole-image view (the finest pyramid level at most ``overview``
    pixels on a side, with the outlines) and a full-resolution crop of
    ``crop`` x ``crop`` pixels where the objects are densest; for a stack,
    the middle z plane. When the whole image fits the crop, only the crop.

    Parameters
    ----------
    image_path : str or os.PathLike
        Preprocessed store (``results/preprocessed/NAME.ome.zarr``).
    labels_path : str or os.PathLike
        Predicted labels (``results/labels/NAME.ome.zarr``).
    out : str or os.PathLike
        PNG to write.
    truth_path : str or os.PathLike, optional
        Ground-truth labels, e.g. the image store's ``labels/gt``.
    metrics_path : str or os.PathLike, optional
        The sample's metrics JSON, for AP@0.5 and mean AP in the title.
    sample : str, optional
        Name in the title (default: from ``labels_path``).
    crop, overview : int
        Side of the crop and largest side of the whole-image view.

    Returns
    -------
    pathlib.Path
    """
    import zarr

    images = _levels(image_path)
    labels = _levels(labels_path)
    truths = _levels(truth_path) if truth_path else None
    ndim = labels[0].ndim
    z = 0.5 if ndim == 3 else None
    full = _plane(labels, 0, ndim=ndim, z=z).shape
    size = (min(crop, full[0]), min(crop, full[1]))
    attrs = dict(zarr.open_group(os.fspath(labels_path), mode="r").attrs).get("unetpipe", {})
    name = sample or Path(os.fspath(labels_path)).name.split(".")[0]
    objects = attrs.get("objects")
    title = f"{name}: {objects if objects is not None else '?'} objects"
    if metrics_path:
        title += _metrics_text(metrics_path)
    if ndim == 3:
        title += f"; z plane {min(int(0.5 * labels[0].shape[0]), labels[0].shape[0] - 1)}"

    panels, box = [], None
    if size == full:
        y0, x0 = 0, 0
    else:
        from skimage.segmentation import find_boundaries

        view, step = _coarse(images, ndim=ndim, z=z, max_side=overview)
        view = np.asarray(view)
        lab = np.asarray(_labels_like(labels, view.shape, step, ndim=ndim, z=z))
        tru = (np.asarray(_labels_like(truths, view.shape, step, ndim=ndim, z=z))
               if truths else None)
        window = (max(1, round(size[0] / step[0])), max(1, round(size[1] / step[1])))
        cy, cx = best_window(find_boundaries(lab, mode="inner"), window)
        y0 = min(round(cy * step[0]), full[0] - size[0])
        x0 = min(round(cx * step[1]), full[1] - size[1])
        box = (y0 / step[0], x0 / step[1], size[0] / step[0], size[1] / step[1])
        panels.append((overlay_rgb(view, lab, tru),
                       f"whole image ({full[0]} x {full[1]}, shown 1:{step[0]:.3g})"))
    region = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    image = np.asarray(_plane(images, 0, ndim=ndim, z=z)[region])
    lab = np.asarray(_plane(labels, 0, ndim=ndim, z=z)[region])
    tru = np.asarray(_plane(truths, 0, ndim=ndim, z=z)[region]) if truths else None
    panels.append((overlay_rgb(image, lab, tru),
                   f"full resolution, rows {y0}:{y0 + size[0]}, columns {x0}:{x0 + size[1]}"))
    fig = overlay_figure(panels, title=title, truth=truths is not None, box=box)
    return _save(fig, out)


def write_weightmap(targets_path, image_path, out, *, crop: int = 128,
                    sample: str | None = None) -> Path:
    """The weight-map figure of a training sample.

    The crop (``crop`` x ``crop`` pixels, the middle z plane of a stack) is
    where the border term is largest in sum: where cells touch or nearly do.

    Parameters
    ----------
    targets_path : str or os.PathLike
        The sample's targets store (``results/targets/NAME.zarr``).
    image_path : str or os.PathLike
        Its preprocessed store, with ``labels/gt``.
    out : str or os.PathLike
        PNG to write.
    crop : int
    sample : str, optional
        Name in the title (default: from ``targets_path``).

    Returns
    -------
    pathlib.Path
    """
    import zarr

    root = zarr.open_group(os.fspath(targets_path), mode="r")
    attrs = dict(root.attrs).get("unetpipe", {})
    targets, weights = root["targets"], root["weights"]
    ndim = targets.ndim
    zi = targets.shape[0] // 2 if ndim == 3 else None
    plane = (zi,) if ndim == 3 else ()
    t_plane = np.asarray(targets[plane])
    w_plane = np.asarray(weights[plane])
    classes = list(attrs.get("classes") or [str(i) for i in range(int(t_plane.max()) + 1)])
    class_weights = attrs.get("class_weights") or [1.0] * len(classes)
    size = (min(crop, t_plane.shape[0]), min(crop, t_plane.shape[1]))
    y0, x0 = best_window(border_from_weights(t_plane, w_plane, class_weights), size)
    region = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    z = 0.5 if ndim == 3 else None
    image = np.asarray(_plane(_levels(image_path), 0, ndim=ndim, z=z)[region])
    truth = np.asarray(_plane(_levels(Path(os.fspath(image_path)) / "labels" / "gt"), 0,
                              ndim=ndim, z=z)[region])
    name = sample or Path(os.fspath(targets_path)).name.split(".")[0]
    where = f"rows {y0}:{y0 + size[0]}, columns {x0}:{x0 + size[1]}"
    if ndim == 3:
        where = f"z plane {zi}, " + where
    fig = weightmap_figure(image, truth, t_plane[region], w_plane[region], classes=classes,
                           w0=float(attrs.get("w0", 10.0)), sigma=float(attrs.get("sigma", 5.0)),
                           unit=attrs.get("unit"),
                           title=f"{name} ({attrs.get('mode', 'targets')}), {where}")
    return _save(fig, out)


def read_benchmarks(root: str | os.PathLike,
                    templates: Mapping[str, str] | None = None):
    """Every Snakemake benchmark file below a folder, one row per job.

    Parameters
    ----------
    root : str or os.PathLike
        E.g. ``results/benchmarks``.
    templates : mapping of str to str, optional
        Rule name -> ``benchmark:`` path template, see :func:`rule_of`.

    Returns
    -------
    pandas.DataFrame
        Columns ``rule``, ``path`` and the benchmark columns; a file with
        several rows (``repeat()``) gives their mean. Values that are not
        numbers (``NA``, ``-``) are NaN.
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(os.fspath(root)).rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if "s" not in frame.columns or frame.empty:
            continue
        nums = frame.drop(columns=["h:m:s"], errors="ignore").apply(pd.to_numeric,
                                                                   errors="coerce")
        row = nums.mean(numeric_only=True).to_dict()
        rule = frame["rule_name"].iloc[0] if "rule_name" in frame.columns else None
        row.update(rule=rule if isinstance(rule, str) else rule_of(path, root, templates),
                   path=os.fspath(path))
        rows.append(row)
    cols = ["rule", "path", *(c for c in BENCHMARK_COLUMNS if c != "h:m:s")]
    table = pd.DataFrame(rows)
    for c in cols:
        if c not in table.columns:
            table[c] = np.nan
    return table[cols]


def write_runtimes(root, out_html, out_png, *, templates: Mapping[str, str] | None = None):
    """The runtime table (HTML) and chart (PNG) of the benchmark files below ``root``.

    Parameters
    ----------
    root : str or os.PathLike
        E.g. ``results/benchmarks``.
    out_html, out_png : str or os.PathLike
        Files to write.
    templates : mapping of str to str, optional
        Rule name -> ``benchmark:`` path template, see :func:`rule_of`.

    Returns
    -------
    pandas.DataFrame
        :func:`runtime_table`.
    """
    table = runtime_table(read_benchmarks(root, templates))
    with atomic_output(out_html) as tmp:
        tmp.write_text(runtime_html(table), encoding="utf-8")
    _save(runtime_figure(table), out_png)
    return table


def write_metrics_html(summary_csv, out) -> Path:
    """``summary.csv`` (:func:`unetpipe.stages.evaluate.summarize`) as an HTML page.

    Parameters
    ----------
    summary_csv, out : str or os.PathLike
        The table to read and the page to write.

    Returns
    -------
    pathlib.Path
    """
    import pandas as pd

    page = metrics_html(pd.read_csv(summary_csv))
    with atomic_output(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(os.fspath(out))


def write_config_html(config: Mapping, out) -> Path:
    """The resolved config as an HTML page (:func:`config_html`).

    Parameters
    ----------
    config : mapping
    out : str or os.PathLike

    Returns
    -------
    pathlib.Path
    """
    with atomic_output(out) as tmp:
        tmp.write_text(config_html(config), encoding="utf-8")
    return Path(os.fspath(out))


def parse_templates(items: Iterable[str]) -> dict[str, str]:
    """``["rule=path/{w}.tsv", ...]`` as ``{"rule": "path/{w}.tsv"}``.

    Parameters
    ----------
    items : iterable of str

    Returns
    -------
    dict of str to str

    Raises
    ------
    ValueError
        For an item without ``=``.
    """
    out = {}
    for item in items:
        name, sep, template = item.partition("=")
        if not sep:
            raise ValueError(f"expected RULE=PATH, not {item!r}")
        out[name] = template
    return out
