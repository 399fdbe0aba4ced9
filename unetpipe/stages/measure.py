"""Per-object measurements of an instance label image, chunk by chunk.

A label image is measured one block at a time: :func:`block_measurements`
turns a block into a table of *partial* measurements per object (pixel
count, coordinate sums and centred second moments, index box, intensity
sums and maxima, probability sum, border flag and, in 2D, the convex hull
of the object's pixel squares), and :func:`combine_measurements` merges the
partial rows of an object across blocks and computes the final table. The
partial columns merge exactly (integer index sums, minima, maxima, the hull
of a union in exact half-pixel coordinates) or, for the second moments, by
the parallel-axis theorem about a point inside the object, so an object that
crosses chunk seams measures the same as when the whole image is measured
at once (centroids, bounding boxes, sizes and solidity bit for bit, the rest
to rounding). Memory thus depends on the block size and on the number of
objects (a few hundred bytes per object and block it touches), never on the
image size.

:func:`measure_store` does this for the stores the pipeline writes (labels,
preprocessed image, class probabilities), one task per label chunk;
:func:`write_table` saves the result as CSV.

Physical units
--------------
Coordinates are physical: the centre of pixel ``i`` along an axis lies at
``i * spacing``. With calibrated inputs (``unit="micrometer"``) lengths are
in micrometres, areas in square micrometres and volumes in cubic
micrometres; uncalibrated inputs have spacing 1 and everything is in pixels.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import InputError

log = logging.getLogger(__name__)

#: Name of the object column of partial hull vertices (2D only).
HULL = "hull"


def _axes(ndim: int) -> str:
    if ndim not in (2, 3):
        raise ValueError(f"labels must be 2-D (yx) or 3-D (zyx), not {ndim}-D")
    return "zyx"[-ndim:]


def _pairs(axes: str) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(axes) for b in axes[i:]]


def partial_columns(ndim: int, *, channels: int = 0, probability: bool = False) -> list[str]:
    """Column names of a partial table from :func:`block_measurements`, in order.

    Parameters
    ----------
    ndim : int
        2 or 3 spatial dimensions.
    channels : int
        Number of intensity channels (0 without an image).
    probability : bool
        Whether the table carries a probability sum.

    Returns
    -------
    list of str
    """
    axes = _axes(ndim)
    cols = ["label", "count"]
    cols += [f"sum_{a}" for a in axes]
    cols += [f"m2_{a}{b}" for a, b in _pairs(axes)]
    cols += [f"min_{a}" for a in axes] + [f"max_{a}" for a in axes]
    for k in range(channels):
        cols += [f"intensity_sum_{k}", f"intensity_max_{k}"]
    if probability:
        cols.append("probability_sum")
    cols += ["touches_border", "n_chunks"]
    if ndim == 2:
        cols.append(HULL)
    return cols


def table_columns(ndim: int, *, channels: int = 0, probability: bool = False) -> list[str]:
    """Column names of a final table from :func:`combine_measurements`, in order.

    Parameters
    ----------
    ndim : int
        2 or 3 spatial dimensions.
    channels : int
        Number of intensity channels (0 without an image). One channel gives
        ``mean_intensity`` and ``max_intensity``; more give
        ``mean_intensity_0``, ``max_intensity_0``, ``mean_intensity_1``, ...
    probability : bool
        Whether there is a ``mean_probability`` column.

    Returns
    -------
    list of str
    """
    axes = _axes(ndim)
    cols = ["label"]
    cols += [f"centroid_{a}" for a in axes]
    cols += [f"bbox_min_{a}" for a in axes] + [f"bbox_max_{a}" for a in axes]
    cols += ["area" if ndim == 2 else "volume", "equivalent_diameter"]
    if channels == 1:
        cols += ["mean_intensity", "max_intensity"]
    else:
        for k in range(channels):
            cols += [f"mean_intensity_{k}", f"max_intensity_{k}"]
    if probability:
        cols.append("mean_probability")
    if ndim == 2:
        cols += ["solidity", "eccentricity"]
    cols += ["touches_border", "n_chunks"]
    return cols


def _check_ids(labels: np.ndarray) -> np.ndarray:
    """Labels as an unsigned or non-negative integer array."""
    kind = labels.dtype.kind
    if kind == "u":
        return labels
    if kind == "i":
        if labels.size and labels.min() < 0:
            raise ValueError("label ids must not be negative")
        return labels
    if kind == "f":
        if labels.size and (not np.all(np.isfinite(labels)) or labels.min() < 0
                            or np.any(labels != np.floor(labels))):
            raise ValueError("floating-point labels must hold non-negative whole numbers")
        return labels.astype(np.uint64)
    raise ValueError(f"labels must be integers, not {labels.dtype}")


def _reduce(ufunc, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat`` over sorted groups that start at ``starts`` (none: empty)."""
    if starts.size == 0:
        return np.zeros(0, dtype=values.dtype)
    return ufunc.reduceat(values, starts)


def _hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of 2-D points, in order, shape (K, 2).

    The points are pixel corners, a translate of the integer grid: a corner
    off the line of a hull edge L pixels long lies at least 1/L pixels from
    it, far beyond Qhull's roundoff, so the hull does not depend on the
    order or grouping of the points.
    """
    from scipy.spatial import ConvexHull

    return np.ascontiguousarray(points[ConvexHull(points).vertices])


def _polygon_areas(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Areas of polygons given by their ordered vertices (shoelace formula).

    For half-integer vertices every product and sum is exact in float64
    (below 2**50), so the areas are exact.
    """
    sizes = np.array([len(p) for p in polygons], dtype=np.intp)
    if sizes.size == 0:
        return np.zeros(0)
    vertices = np.concatenate(polygons)
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    following = np.arange(1, vertices.shape[0] + 1)
    following[first + sizes - 1] = first  # each polygon closes on its first vertex
    y, x = vertices[:, 0], vertices[:, 1]
    cross = y * x[following] - x * y[following]
    return np.abs(np.add.reduceat(cross, first)) / 2


def block_measurements(labels, *, origin: Sequence[int], image_shape: Sequence[int],
                       spacing: Sequence[float], intensity=None, probability=None):
    """Partial measurements of every object in one block of a label image.

    Parameters
    ----------
    labels : ndarray of int, shape (M, N) or (P, M, N)
        One block of an instance label image, 0 = background.
    origin : sequence of int
        Index of the block's first pixel in the whole image.
    image_shape : sequence of int
        Spatial shape of the whole image (for the border flag).
    spacing : sequence of float
        Physical pixel size per axis (plane, row, column).
    intensity : ndarray of shape (C, *labels.shape), optional
        Image intensities of the block, channel first.
    probability : ndarray of shape labels.shape, optional
        Per-pixel probability of the cell class(es), ``1 - P(background)``.

    Returns
    -------
    pandas.DataFrame
        One row per non-zero label present, sorted by label, with the
        columns of :func:`partial_columns`:

        - ``label`` (uint64) and ``count``, the number of pixels (int64);
        - ``sum_z/y/x``: sums of the pixel indices in the whole image
          (int64, exact; times ``spacing``, the sums of the physical
          pixel-centre coordinates);
        - ``m2_zz``, ``m2_zy``, ...: sums of products of the physical
          pixel-centre coordinates' deviations from the object's mean *in
          this block* (centred, so that no precision is lost to large
          coordinates on big images; they merge by the parallel-axis theorem);
        - ``min_z/y/x``, ``max_z/y/x``: pixel index range in the whole image;
        - ``intensity_sum_k``, ``intensity_max_k`` per channel k (float64);
        - ``probability_sum`` (float64);
        - ``touches_border``: a pixel lies on the first or last index of an axis;
        - ``n_chunks``: 1;
        - ``hull`` (2D only): ndarray of float64, shape (K, 2), the (y, x)
          vertices, in order, of the convex hull of the corners of the
          object's pixel squares in this block, in index units of the whole
          image (half-integers, so that hulls merge exactly; times
          ``spacing``, physical coordinates).

    Notes
    -----
    Index sums are exact (integers), so blocks can be merged in any order
    and give the same centroids as the whole image, bit for bit.

    Examples
    --------
    >>> labels = np.array([[0, 1, 1], [0, 1, 1]], dtype=np.uint32)
    >>> t = block_measurements(labels, origin=(0, 0), image_shape=(2, 3), spacing=(1.0, 1.0))
    >>> int(t["count"][0]), int(t["sum_x"][0])
    (4, 6)
    """
    import pandas as pd

    labels = _check_ids(np.asarray(labels))
    axes = _axes(labels.ndim)
    ndim = labels.ndim
    origin = tuple(int(o) for o in origin)
    image_shape = tuple(int(s) for s in image_shape)
    spacing = tuple(float(s) for s in spacing)
    for name, value in (("origin", origin), ("image_shape", image_shape), ("spacing", spacing)):
        if len(value) != ndim:
            raise ValueError(f"{name} {value} does not match {ndim}-D labels")
    if any(o < 0 or o + n > s for o, n, s in zip(origin, labels.shape, image_shape, strict=True)):
        raise ValueError(f"a block of shape {labels.shape} at {origin} does not fit in an image "
                         f"of shape {image_shape}")
    channels = 0
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.ndim != ndim + 1 or intensity.shape[1:] != labels.shape:
            raise ValueError(f"intensity of shape {intensity.shape} does not match labels of "
                             f"shape {labels.shape} (expected (C, *labels.shape))")
        channels = intensity.shape[0]
    if probability is not None:
        probability = np.asarray(probability)
        if probability.shape != labels.shape:
            raise ValueError(f"probability of shape {probability.shape} does not match labels "
                             f"of shape {labels.shape}")

    flat = labels.ravel()
    where = np.flatnonzero(flat)
    # Stable: within an object the pixels stay in raster order (rows for the hull).
    where = where[np.argsort(flat[where], kind="stable")]
    ids_sorted = flat[where]
    n = where.size
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]]) if n else \
        np.zeros(0, dtype=np.intp)
    counts = np.diff(np.r_[starts, n]).astype(np.int64)
    coords = [c.astype(np.int64) + o
              for c, o in zip(np.unravel_index(where, labels.shape), origin, strict=True)]

    cols: dict[str, object] = {"label": ids_sorted[starts].astype(np.uint64), "count": counts}
    deviations = []
    for a, c in zip(axes, coords, strict=True):
        total = _reduce(np.add, c, starts)  # exact
        cols[f"sum_{a}"] = total
        mean = total / np.maximum(counts, 1)
        deviations.append(c - np.repeat(mean, counts))
    for (a, b), (i, j) in zip(_pairs(axes), _pairs(range(ndim)), strict=True):
        cols[f"m2_{a}{b}"] = _reduce(np.add, deviations[i] * deviations[j], starts) \
            * (spacing[i] * spacing[j])
    del deviations
    lo = [_reduce(np.minimum, c, starts) for c in coords]
    hi = [_reduce(np.maximum, c, starts) for c in coords]
    for a, v in zip(axes, lo, strict=True):
        cols[f"min_{a}"] = v
    for a, v in zip(axes, hi, strict=True):
        cols[f"max_{a}"] = v
    for k in range(channels):
        values = intensity[k].ravel()[where].astype(np.float64)
        cols[f"intensity_sum_{k}"] = _reduce(np.add, values, starts)
        cols[f"intensity_max_{k}"] = _reduce(np.maximum, values, starts)
    if probability is not None:
        cols["probability_sum"] = _reduce(np.add, probability.ravel()[where].astype(np.float64),
                                          starts)
    border = np.zeros(starts.size, dtype=bool)
    for lo_a, hi_a, size in zip(lo, hi, image_shape, strict=True):
        border |= (lo_a == 0) | (hi_a == size - 1)
    cols["touches_border"] = border
    cols["n_chunks"] = np.ones(starts.size, dtype=np.int64)
    if ndim == 2:
        cols[HULL] = _block_hulls(ids_sorted, coords, starts)
    return pd.DataFrame(cols, columns=partial_columns(ndim, channels=channels,
                                                      probability=probability is not None))


def _block_hulls(ids_sorted, coords, starts) -> np.ndarray:
    """Per object, the hull vertices of its pixel squares (object array of (K, 2))."""
    ys, xs = coords
    n = ys.size
    out = np.empty(starts.size, dtype=object)
    if n == 0:
        return out
    # The squares of a row of pixels have the hull of its first and last
    # square: four corners per (object, row) run suffice.
    run = np.flatnonzero(np.r_[True, (ids_sorted[1:] != ids_sorted[:-1]) | (ys[1:] != ys[:-1])])
    last = np.r_[run[1:], n] - 1
    y0, y1 = ys[run] - 0.5, ys[run] + 0.5
    x0, x1 = xs[run] - 0.5, xs[last] + 0.5
    corners = np.stack([np.stack([y0, x0], 1), np.stack([y1, x0], 1),
                        np.stack([y0, x1], 1), np.stack([y1, x1], 1)], axis=1)  # (R, 4, 2)
    bounds = np.r_[np.searchsorted(run, starts), run.size]
    for i in range(starts.size):
        out[i] = _hull(corners[bounds[i]:bounds[i + 1]].reshape(-1, 2))
    return out


def _empty_table(ndim: int, channels: int, probability: bool):
    import pandas as pd

    cols = table_columns(ndim, channels=channels, probability=probability)
    dtypes = {c: np.float64 for c in cols}
    dtypes.update(label=np.uint64, touches_border=bool, n_chunks=np.int64)
    return pd.DataFrame({c: np.zeros(0, dtype=dtypes[c]) for c in cols}, columns=cols)


def combine_measurements(partials: Iterable, *, spacing: Sequence[float], unit: str | None = None,
                         channels: int | None = None):
    """Merge partial measurements by label and compute the final table.

    Parameters
    ----------
    partials : iterable of pandas.DataFrame
        Tables from :func:`block_measurements`, all with the same columns;
        an object may appear in several (once per block it has pixels in).
    spacing : sequence of float
        Physical pixel size per axis, as given to :func:`block_measurements`.
    unit : str, optional
        Unit of ``spacing``: ``"micrometer"`` for calibrated images, None
        for pixel units. Stored in the table's ``attrs``.
    channels : int, optional
        Number of intensity channels. By default taken from the partials;
        give it so that an empty ``partials`` still yields the right header.

    Returns
    -------
    pandas.DataFrame
        One row per object, sorted by label, columns as in
        :func:`table_columns`:

        - ``label``;
        - ``centroid_z/y/x``: mean physical pixel-centre coordinates;
        - ``bbox_min_z/y/x``, ``bbox_max_z/y/x``: ``min index * spacing`` and
          ``(max index + 1) * spacing``, scikit-image's half-open bounding
          box scaled (so half a pixel after the pixel-centre frame of the
          centroids);
        - ``area`` (2D) or ``volume`` (3D): pixel count times pixel size;
        - ``equivalent_diameter``: of the disk or sphere of that size;
        - ``mean_intensity``, ``max_intensity`` (one channel; several give
          ``mean_intensity_0``, ``max_intensity_0``, ...), with an image;
        - ``mean_probability``: mean of ``1 - P(background)``, with
          probabilities;
        - ``solidity`` (2D): area over the area of the convex hull of the
          pixel squares (1 for a filled rectangle);
        - ``eccentricity`` (2D): ``sqrt(1 - l_min / l_max)`` for the
          eigenvalues of the covariance of the pixel-centre coordinates, as
          :func:`skimage.measure.regionprops` defines it (0 for a disk or a
          single pixel);
        - ``touches_border`` (bool): the object has a pixel on the image border;
        - ``n_chunks``: number of blocks it has pixels in.

        Lengths are in the unit of ``spacing`` (micrometres when ``unit``
        is set, pixels otherwise), areas and volumes in its square and cube.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2]], dtype=np.uint32)
    >>> left = block_measurements(labels[:, :2], origin=(0, 0), image_shape=(1, 4),
    ...                           spacing=(1.0, 0.5))
    >>> right = block_measurements(labels[:, 2:], origin=(0, 2), image_shape=(1, 4),
    ...                            spacing=(1.0, 0.5))
    >>> t = combine_measurements([left, right], spacing=(1.0, 0.5))
    >>> t["area"].tolist(), t["centroid_x"].tolist()
    ([1.0, 0.5], [0.25, 1.5])
    """
    import pandas as pd

    spacing = tuple(float(s) for s in spacing)
    ndim = len(spacing)
    axes = _axes(ndim)
    frames = list(partials)
    probability = bool(frames) and "probability_sum" in frames[0].columns
    if channels is None:
        channels = sum(str(c).startswith("intensity_sum_") for c in frames[0].columns) \
            if frames else 0
    expected = partial_columns(ndim, channels=channels, probability=probability)
    for f in frames:
        if list(f.columns) != expected:
            raise ValueError(f"partial table columns {list(f.columns)} differ from the expected "
                             f"{expected}")
    frames = [f for f in frames if len(f)]
    if not frames:
        table = _empty_table(ndim, channels, probability)
        table.attrs.update(unit=unit, spacing=spacing)
        return table
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    labels = df["label"].to_numpy(dtype=np.uint64)
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    parts = np.diff(np.r_[starts, labels.size])

    def column(name, dtype=None):
        return df[name].to_numpy(dtype=dtype)[order]

    n_rows = column("count", np.int64)
    count = _reduce(np.add, n_rows, starts)
    first = {a: _reduce(np.minimum, column(f"min_{a}", np.int64), starts) for a in axes}
    last = {a: _reduce(np.maximum, column(f"max_{a}", np.int64), starts) for a in axes}
    out: dict[str, object] = {"label": labels[starts]}
    deviations = []
    for a, s in zip(axes, spacing, strict=True):
        sums = column(f"sum_{a}", np.int64)
        total = _reduce(np.add, sums, starts)
        out[f"centroid_{a}"] = total / count * s
        # Block means less the object's mean, in index units, both taken
        # relative to the object's first index (exact integers) so that
        # their rounding scales with the object's size, not its position.
        ref = np.repeat(first[a], parts)
        block_mean = (sums - n_rows * ref) / n_rows
        mean = np.repeat((total - count * first[a]) / count, parts)
        deviations.append((block_mean - mean) * s)
    cov = np.empty((count.size, ndim, ndim))
    for (a, b), (i, j) in zip(_pairs(axes), _pairs(range(ndim)), strict=True):
        m2 = column(f"m2_{a}{b}", np.float64) + n_rows * deviations[i] * deviations[j]
        cov[:, i, j] = cov[:, j, i] = _reduce(np.add, m2, starts) / count
    for a, s in zip(axes, spacing, strict=True):
        out[f"bbox_min_{a}"] = first[a] * s
    for a, s in zip(axes, spacing, strict=True):
        out[f"bbox_max_{a}"] = (last[a] + 1) * s
    size = count * math.prod(spacing)
    out["area" if ndim == 2 else "volume"] = size
    out["equivalent_diameter"] = (np.sqrt(4 * size / np.pi) if ndim == 2
                                  else np.cbrt(6 * size / np.pi))
    for k in range(channels):
        suffix = "" if channels == 1 else f"_{k}"
        out[f"mean_intensity{suffix}"] = _reduce(
            np.add, column(f"intensity_sum_{k}", np.float64), starts) / count
        out[f"max_intensity{suffix}"] = _reduce(
            np.maximum, column(f"intensity_max_{k}", np.float64), starts)
    if probability:
        out["mean_probability"] = _reduce(np.add, column("probability_sum", np.float64),
                                          starts) / count
    if ndim == 2:
        hulls = column(HULL)
        merged = [hulls[start] if k == 1 else _hull(np.concatenate(hulls[start:start + k]))
                  for start, k in zip(starts, parts, strict=True)]
        # Both areas in pixels (spacing scales them alike): exactly 1 for a rectangle.
        out["solidity"] = count / _polygon_areas(merged)
        out["eccentricity"] = _eccentricity(cov)
    out["touches_border"] = _reduce(np.logical_or, column("touches_border", bool), starts)
    out["n_chunks"] = _reduce(np.add, column("n_chunks", np.int64), starts)
    table = pd.DataFrame(out, columns=table_columns(ndim, channels=channels,
                                                    probability=probability))
    table.attrs.update(unit=unit, spacing=spacing)
    return table


def _eccentricity(cov: np.ndarray) -> np.ndarray:
    """``sqrt(1 - l_min / l_max)`` of 2x2 covariance matrices, shape (N, 2, 2).

    Written as ``sqrt((l_max - l_min) / l_max)`` with the eigenvalue gap in
    closed form, which has no cancellation for thin objects. As in
    regionprops, eigenvalues below 0 count as 0, and the eccentricity is 0
    when the largest eigenvalue is (a single pixel).
    """
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    gap = np.hypot(a - c, 2 * b)
    l_max = np.maximum((a + c + gap) / 2, 0.0)
    gap = np.minimum(gap, l_max)  # l_min = l_max - gap >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(l_max > 0, np.sqrt(gap / l_max), 0.0)


def _check_shape(image, shape: tuple[int, ...], labels_path: str) -> None:
    if image.spatial_shape != shape:
        raise InputError(image.path, f"spatial shape {image.spatial_shape} differs from the "
                                     f"label image's {shape} ({labels_path})")


def measure_store(labels_path: str | os.PathLike, *, image_path: str | os.PathLike | None = None,
                  probabilities_path: str | os.PathLike | None = None,
                  threads: int | None = None, progress: bool = False):
    """Measure every object of a label store, one label chunk at a time.

    Parameters
    ----------
    labels_path : str or os.PathLike
        Instance labels (an OME-Zarr label image, or anything
        :func:`unetpipe.io.images.read_labels` reads); its chunks are the blocks.
    image_path : str or os.PathLike, optional
        The image to take intensities from (axes ``c(z)yx`` or ``(z)yx``).
    probabilities_path : str or os.PathLike, optional
        Class probabilities (axes ``c(z)yx``, channel 0 = background); the
        table gets the mean of ``1 - P(background)`` per object.
    threads : int, optional
        Number of worker threads (default: one per core).
    progress : bool
        Show a progress bar over the chunks.

    Returns
    -------
    pandas.DataFrame
        See :func:`combine_measurements`; physical units from the label
        store's metadata (micrometres when calibrated, else pixels).

    Raises
    ------
    InputError
        When a file cannot be read, or the image or probabilities differ
        from the labels in spatial shape (the message names the file).
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..core.progress import bar
    from ..io.images import read_image, read_labels

    labels = read_labels(labels_path)
    shape = labels.spatial_shape
    chunks = labels.data.chunks
    intensity_data = background_data = None
    channels = 0
    if image_path is not None:
        image = read_image(image_path)
        _check_shape(image, shape, labels.path)
        _compare_spacing(image, labels)
        intensity_data = image.data if "c" in image.axes else image.data[None]
        channels = int(intensity_data.shape[0])
    if probabilities_path is not None:
        probs = read_image(probabilities_path)
        if not probs.axes.startswith("c"):
            raise InputError(probs.path, f"has axes {probs.axes!r}; expected class "
                                         "probabilities with a channel axis (c first)")
        _check_shape(probs, shape, labels.path)
        _compare_spacing(probs, labels)
        background_data = probs.data[0]
    offsets = [np.r_[0, np.cumsum(c)[:-1]] for c in chunks]
    boxes = [tuple(slice(int(o[i]), int(o[i]) + c[i]) for o, c, i in
                   zip(offsets, chunks, index, strict=True))
             for index in np.ndindex(*[len(c) for c in chunks])]

    def read(data, box):
        # each task reads only the chunks under its box, in its own thread
        return np.asarray(data[box].compute(scheduler="synchronous"))

    def measure(box):
        intensity = probability = None
        if intensity_data is not None:
            intensity = read(intensity_data, (slice(None), *box))
        if background_data is not None:
            probability = 1.0 - read(background_data, box).astype(np.float64)
        return block_measurements(read(labels.data, box),
                                  origin=tuple(b.start for b in box), image_shape=shape,
                                  spacing=labels.spacing, intensity=intensity,
                                  probability=probability)

    partials = []
    with bar(total=len(boxes), desc="measure", unit="chunk", disable=not progress,
             leave=False) as pbar, ThreadPoolExecutor(max_workers=threads or os.cpu_count()
                                                      or 1) as pool:
        for table in pool.map(measure, boxes):
            partials.append(table)
            pbar.update(1)
    return combine_measurements(partials, spacing=labels.spacing, unit=labels.unit,
                                channels=channels)


def _compare_spacing(image, labels) -> None:
    if image.unit == labels.unit and np.allclose(image.spacing, labels.spacing, rtol=1e-6):
        return
    log.warning("%s: pixel size %s %s differs from the labels' %s %s (%s); measuring in the "
                "labels' units", image.path, image.spacing, image.unit or "pixel",
                labels.spacing, labels.unit or "pixel", labels.path)


def write_table(table, path: str | os.PathLike) -> Path:
    """Write a measurement table as CSV, atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`combine_measurements` or :func:`measure_store`.
    path : str or os.PathLike
        Destination ``.csv`` file; written beside it under a temporary name
        and renamed into place when complete.

    Returns
    -------
    pathlib.Path

    Notes
    -----
    Floats are written at full (round-trip) precision, so coordinates on
    large images survive; an empty table gives the header line only.
    """
    from ..io.images import atomic_output

    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    return Path(os.fspath(path))
