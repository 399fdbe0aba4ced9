"""Training targets and the U-Net paper's separation weight map (Eq. 2).

For instance labels ``L`` (0 = background), 2D or 3D:

1. **Targets.** A pixel of cell i with a face neighbour in another cell
   j != 0 becomes background: the separation gaps. ``targets = 1`` on the
   remaining cell pixels, 0 elsewhere. ``L'`` is ``L`` restricted to
   ``targets == 1``. In the three-class mode the cell pixels of ``L'`` with a
   face neighbour outside their cell become class 2 (boundary), the others
   class 1 (interior).
2. **Distances.** ``d_i(x)`` is the Euclidean distance, in physical units, from
   x to the nearest pixel of cell i of ``L'``; ``d1``, ``d2`` are the smallest
   and second smallest over all cells.
3. **Border term.** ``B = w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on
   background pixels (targets == 0), 0 on cell pixels, and 0 everywhere when
   ``L'`` has fewer than two cells.
4. **Class balance.** ``w_c = N / (K * N_c)`` for the class c of each pixel
   (K classes, N pixels, N_c of class c); every ``w_c = 1`` when a class is
   absent or class balancing is off. With two classes this is ``N / (2 N_c)``.
5. ``weights = w_c + B``, float32.

The border term is computed exactly where it matters. Let
``R = sigma * sqrt(2 ln(1000))``, so that ``B >= 1e-3 * w0`` exactly where
``d1 + d2 <= R``. There, the two nearest cells are each within ``R`` of the
pixel, and their nearest pixels are within ``R`` of each other (triangle
inequality). So each cell's distance transform is taken only in its
bounding box grown by ``R``, and a cell with no other cell in that window is
skipped. Leaving a cell out can only raise ``d1 + d2``, so the computed
``B`` never exceeds the true one, and it is only left out where it is not
one of the two nearest cells or where the true ``B`` is already below
``1e-3 * w0``. The result differs from the definition by less than
``1e-3 * w0``, and not at all, up to rounding, where ``B >= 1e-3 * w0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "MODES",
    "SeparationTargets",
    "border_term",
    "class_weights",
    "influence_radius",
    "nearest_two",
    "separation_targets",
    "separation_weight_map",
    "targets_for_mode",
    "weights_from_counts",
]

MODES = ("two_class", "three_class")
# The border term is ignored where it is below this fraction of w0.
TOLERANCE = 1e-3
# Mean window size (pixels) from which per-cell distance transforms run in threads.
_THREADED_WINDOW = 16384


def _face_neighbours(ndim: int):
    """Per axis, the two slices that pair each pixel with its next face neighbour."""
    for axis in range(ndim):
        lo = [slice(None)] * ndim
        hi = [slice(None)] * ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        yield tuple(lo), tuple(hi)


def _mark_pairs(labels: np.ndarray, pair) -> np.ndarray:
    """Pixels where ``pair(a, b)`` holds with a face neighbour (on both sides)."""
    out = np.zeros(labels.shape, dtype=bool)
    for lo, hi in _face_neighbours(labels.ndim):
        hit = pair(labels[lo], labels[hi])
        out[lo] |= hit
        out[hi] |= hit
    return out


def _face_contacts(labels: np.ndarray) -> np.ndarray:
    """Pixels with a face neighbour in a different non-zero label."""
    return _mark_pairs(labels, lambda a, b: (a != b) & (a != 0) & (b != 0))


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError("labels must not be negative (0 = background, cells > 0)")
    return labels


def _check_params(w0: float, sigma: float) -> None:
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    if not (np.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be >= 0 and finite, got {w0}")


def separation_targets(labels) -> np.ndarray:
    """Foreground targets with separation gaps between touching cells.

    Parameters
    ----------
    labels : ndarray of shape (M, N) or (P, M, N)
        Instance labels, any integer dtype, 0 = background.

    Returns
    -------
    targets : ndarray of uint8, same shape
        1 on cell pixels, 0 on background and on every cell pixel that has a
        face neighbour in another cell.

    Examples
    --------
    >>> separation_targets(np.array([[1, 1, 2, 2, 0]]))
    array([[1, 0, 0, 1, 0]], dtype=uint8)
    """
    labels = _check_labels(labels)
    return ((labels != 0) & ~_face_contacts(labels)).astype(np.uint8)


def _three_class(labels: np.ndarray) -> np.ndarray:
    fg = (labels != 0) & ~_face_contacts(labels)
    edge = _mark_pairs(np.where(fg, labels, 0), np.not_equal)
    out = fg.astype(np.uint8)
    out[fg & edge] = 2
    return out


def targets_for_mode(labels, mode: str = "two_class") -> np.ndarray:
    """Targets for a training mode.

    Parameters
    ----------
    labels : ndarray of shape (M, N) or (P, M, N)
        Instance labels, 0 = background.
    mode : {"two_class", "three_class"}
        ``"two_class"``: the paper's background (gaps included) / cell.
        ``"three_class"``: background (gaps included) / cell interior / cell
        boundary (cell pixels of ``L'`` with a face neighbour outside their
        cell; the image border does not make a boundary).

    Returns
    -------
    targets : ndarray of uint8, same shape
        Class per pixel: 0, 1 (and 2).
    """
    labels = _check_labels(labels)
    if mode == "two_class":
        return separation_targets(labels)
    if mode == "three_class":
        return _three_class(labels)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def influence_radius(sigma: float) -> float:
    """Distance beyond which a cell cannot change the border term by ``1e-3 * w0``."""
    return float(sigma) * math.sqrt(2.0 * math.log(1.0 / TOLERANCE))


def _spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.asarray(spacing, dtype=float)
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return values


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n (for ``find_objects``), whatever the original ids' range (ids >= 0)."""
    top = int(labels.max()) if labels.size else 0
    # find_objects makes one entry per id up to the largest: fine for dense ids
    if top <= max(labels.size // 8, 1 << 16):
        return labels.astype(np.intp, copy=False)
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if labels.min() != 0:
        inverse += 1  # no background: 0 must not be a cell
    return inverse.astype(np.intp, copy=False)


def nearest_two(cells, *, spacing=None, radius: float = np.inf,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and the second nearest cell, within ``radius``.

    Parameters
    ----------
    cells : ndarray of shape (M, N) or (P, M, N)
        Cell ids (0 = none).
    spacing : sequence of float, optional
        Physical pixel size per axis.
    radius : float
        Distances above ``radius`` may be reported as ``inf``; a cell with no
        other cell within ``radius`` of it is left out entirely.
    threads : int, optional
        Cells whose distance transforms run at once (SciPy's transform
        releases the GIL); default: one per core. Used when the windows are
        large enough to gain from it (3D); small 2D windows run serially.

    Returns
    -------
    d1, d2 : ndarray of float64, same shape
        Smallest and second smallest distance, ``inf`` where there is none.
    """
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cells = _sequential(_check_labels(cells))
    sp = _spacing(spacing, cells.ndim)
    d1 = np.full(cells.shape, np.inf)
    d2 = np.full(cells.shape, np.inf)
    reach = np.ceil(radius / sp).astype(np.int64) if np.isfinite(radius) else None
    jobs = []
    for index, box in enumerate(ndi.find_objects(cells), start=1):
        if box is None:
            continue
        if reach is None:
            window = tuple(slice(0, n) for n in cells.shape)
        else:
            window = tuple(slice(max(0, b.start - r), min(n, b.stop + r))
                           for b, r, n in zip(box, reach, cells.shape, strict=True))
        jobs.append((index, window))
    lock = threading.Lock()

    def run(job):
        index, window = job
        win = cells[window]
        mine = win == index
        if reach is not None and not np.any((win != 0) & ~mine):
            return  # no other cell within reach: it cannot be one of two near cells
        d = ndi.distance_transform_edt(~mine, sampling=sp)
        with lock:  # min/max commute: the order of cells does not matter
            w1, w2 = d1[window], d2[window]
            np.minimum(w2, np.maximum(w1, d), out=w2)
            np.minimum(w1, d, out=w1)

    workers = threads or os.cpu_count() or 1
    volumes = [math.prod(s.stop - s.start for s in w) for _, w in jobs] or [0]
    if float(np.mean(volumes)) < _THREADED_WINDOW:
        # Small windows (2D cells): Python's per-cell work dominates and
        # threads only contend for the GIL.
        workers = 1
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            run(job)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(run, jobs):
                pass
    return d1, d2


def border_term(labels, *, w0: float = 10.0, sigma: float = 5.0, spacing=None,
                threads: int | None = None) -> np.ndarray:
    """The border term ``B`` of the weight map, float64 (see the module notes)."""
    labels = _check_labels(labels)
    _check_params(w0, sigma)
    return _border(labels, separation_targets(labels) == 1, w0=w0, sigma=sigma,
                   spacing=spacing, threads=threads)


def _border(labels, foreground, *, w0, sigma, spacing, threads) -> np.ndarray:
    """The border term from the labels and the targets' foreground (``L'``)."""
    cells = np.where(foreground, labels, 0)
    out = np.zeros(labels.shape)
    if w0 == 0 or not cells.any():
        return out
    d1, d2 = nearest_two(cells, spacing=spacing, radius=influence_radius(sigma), threads=threads)
    near = ~foreground & np.isfinite(d2)
    total = d1[near] + d2[near]
    out[near] = w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return out


def class_weights(targets, *, n_classes: int, class_balance: bool = True) -> np.ndarray:
    """Per-class weights ``N / (K * N_c)`` (all 1 if a class is absent, or when off).

    Parameters
    ----------
    targets : ndarray of int
        Class per pixel, 0..n_classes-1.
    n_classes : int
        K, the number of classes of the mode.
    class_balance : bool
        False gives weight 1 to every class.

    Returns
    -------
    ndarray of float64 of shape (n_classes,)

    Examples
    --------
    >>> class_weights(np.array([0, 0, 0, 1]), n_classes=2)
    array([0.66666667, 2.        ])
    """
    counts = np.bincount(np.asarray(targets).ravel(), minlength=n_classes)[:n_classes]
    return weights_from_counts(counts, class_balance=class_balance)


def weights_from_counts(counts, *, class_balance: bool = True) -> np.ndarray:
    """``N / (K * N_c)`` from class counts; all 1 when a class is absent or when off.

    A class that is absent leaves nothing to balance against, so then every
    class weighs 1 (an image without cells is not down-weighted to 0.5).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not class_balance or np.any(counts == 0):
        return np.ones(len(counts))
    return counts.sum() / (len(counts) * counts)


def separation_weight_map(labels, *, w0: float = 10.0, sigma: float = 5.0, spacing=None,
                          class_balance: bool = True, mode: str = "two_class",
                          threads: int | None = None) -> np.ndarray:
    """The U-Net paper's weight map: class balance plus the separation border term.

    Parameters
    ----------
    labels : ndarray of shape (M, N) or (P, M, N)
        Instance labels, any integer dtype (ids need not be consecutive),
        0 = background.
    w0 : float
        Height of the border term.
    sigma : float
        Width of the border term, in the units of ``spacing`` (pixels when
        ``spacing`` is None).
    spacing : sequence of float, optional
        Physical pixel size per axis, e.g. ``(2.0, 0.5, 0.5)``.
    class_balance : bool
        Weight each class by ``N / (K * N_c)``; otherwise 1.
    mode : {"two_class", "three_class"}
        The targets the class balance counts; the border term is the same.
    threads : int, optional
        Threads for the per-cell distance transforms; default one per core.

    Returns
    -------
    weights : ndarray of float32, same shape
        ``w_c + B``.

    Notes
    -----
    Exact up to ``1e-3 * w0`` everywhere, and up to rounding where the border
    term is at least ``1e-3 * w0`` (see the module notes). The cost is one
    distance transform per cell in a window of the cell's size plus
    ``2 * R`` per axis, not one over the whole image.

    Examples
    --------
    >>> labels = np.zeros((1, 9), int); labels[0, 1:4] = 1; labels[0, 5:8] = 2
    >>> w = separation_weight_map(labels, w0=10, sigma=2, class_balance=False)
    >>> round(float(w[0, 4]), 4)  # between the cells: d1 = d2 = 1
    2.3534
    """
    return _targets_and_weights(labels, mode=mode, w0=w0, sigma=sigma, spacing=spacing,
                                class_balance=class_balance, threads=threads)[1]


def _targets_and_weights(labels, *, mode, w0, sigma, spacing, class_balance, threads):
    labels = _check_labels(labels)
    _check_params(w0, sigma)
    targets = targets_for_mode(labels, mode)
    n_classes = 2 if mode == "two_class" else 3
    wc = class_weights(targets, n_classes=n_classes, class_balance=class_balance)
    border = _border(labels, targets > 0, w0=w0, sigma=sigma, spacing=spacing, threads=threads)
    return targets, (wc[targets] + border).astype(np.float32)


@dataclass(frozen=True)
class SeparationTargets:
    """Labels to ``(targets, weights)``, with fixed settings.

    Examples
    --------
    >>> transform = SeparationTargets(mode="two_class", w0=10.0, sigma=5.0)
    >>> targets, weights = transform(np.array([[1, 1, 0, 2, 2]]))
    >>> targets.tolist()
    [[1, 1, 0, 1, 1]]
    """

    mode: str = "two_class"
    w0: float = 10.0
    sigma: float = 5.0
    spacing: Sequence[float] | None = None
    class_balance: bool = True

    def __call__(self, labels) -> tuple[np.ndarray, np.ndarray]:
        return _targets_and_weights(labels, mode=self.mode, w0=self.w0, sigma=self.sigma,
                                    spacing=self.spacing, class_balance=self.class_balance,
                                    threads=None)
