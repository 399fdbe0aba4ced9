"""Instances from class probabilities in one window held in memory.

The network predicts, per pixel, background and cell (``two_class``; the
gaps between touching cells are background) or background, cell interior and
cell boundary (``three_class``).

- :func:`connected_instances`: the connected components of the cell
  (interior) class, the simple step used during training.
- :class:`SegmentParams` and :func:`segment_array`: the segmentation the
  workflow runs (components or watershed, sizes, holes; see
  :mod:`unetpipe.stages.segment`), on one window. The chunked stage
  :func:`unetpipe.stages.segment.segment_store` runs :func:`segment_window`
  on every block and stitches the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from ..core.errors import ConfigError


def connected_instances(probabilities, *, mode: str = "two_class", min_size: int = 0,
                        grow: int = 2) -> np.ndarray:
    """Instance labels from class probabilities by connected components.

    Parameters
    ----------
    probabilities : ndarray of shape (K, *S)
        Per-class probabilities (or any scores whose arg-max is the class),
        K = 2 for ``two_class``, 3 for ``three_class``.
    mode : {"two_class", "three_class"}
        Target mode the network was trained with.
    min_size : int
        Components with fewer pixels are dropped.
    grow : int
        ``three_class`` only: interior components grow by up to this many
        pixels into the pixels predicted as boundary, to recover the cells'
        outlines.

    Returns
    -------
    ndarray of int32, shape S
        Instance labels, 0 = background, ids 1..n.
    """
    from scipy import ndimage as ndi

    probabilities = np.asarray(probabilities)
    expected = {"two_class": 2, "three_class": 3}.get(mode)
    if expected is None:
        raise ValueError(f"mode must be 'two_class' or 'three_class', got {mode!r}")
    if probabilities.shape[0] != expected:
        raise ValueError(f"{mode} needs {expected} class channels, got probabilities of shape "
                         f"{probabilities.shape}")
    classes = np.argmax(probabilities, axis=0)
    structure = ndi.generate_binary_structure(classes.ndim, 1)
    labels, n = ndi.label(classes == 1, structure=structure)
    if mode == "three_class" and grow > 0 and n:
        from skimage.segmentation import expand_labels

        grown = expand_labels(labels, distance=grow)
        labels = np.where((labels == 0) & (classes == 2), grown, labels)
    if min_size > 0 and n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    from skimage.segmentation import relabel_sequential

    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


METHODS = ("components", "watershed")


SEEDS = ("classes", "distance")


DEFAULT_HALO = {"components": 16, "watershed": 32}


@dataclass(frozen=True)
class SegmentParams:
    """Settings of one segmentation (see :func:`segment_array`).

    The defaults are those of the config schema: the settings that scored
    best on the built-in demo (README, "Segmentation").
    """

    method: str = "watershed"
    threshold: float = 0.6
    foreground: float = 0.4
    grow: int | None = None
    seeds: str = "classes"
    h: float = 2.0
    min_size: float = 20.0
    max_size: float | None = None
    fill_holes: float | None = None

    def check(self, prefix: str = "segment") -> SegmentParams:
        """Raise ConfigError naming the key of a bad value."""
        def bad(key, value, why):
            raise ConfigError(f"config key '{prefix}.{key}': {value!r} {why}")

        if self.method not in METHODS:
            bad("method", self.method, f"is not one of {', '.join(METHODS)}")
        if self.seeds not in SEEDS:
            bad("seeds", self.seeds, f"is not one of {', '.join(SEEDS)}")
        for key in ("threshold", "foreground"):
            value = getattr(self, key)
            if not 0 < value < 1:
                bad(key, value, "must lie between 0 and 1")
        if self.grow is not None and self.grow < 0:
            bad("grow", self.grow, "must not be negative")
        if self.h <= 0:
            bad("h", self.h, "must be positive")
        if self.min_size < 0:
            bad("min_size", self.min_size, "must not be negative")
        if self.max_size is not None and self.max_size < self.min_size:
            bad("max_size", self.max_size, f"is below min_size ({self.min_size})")
        if self.fill_holes is not None and self.fill_holes < 0:
            bad("fill_holes", self.fill_holes, "must not be negative")
        return self

    @property
    def merge(self) -> str:
        """How blocks are stitched: by shared seed pixels ("markers", exact when
        seeds depend on each pixel alone), or by the overlap of whole objects."""
        return "overlap" if self.method == "watershed" and self.seeds == "distance" \
            else "markers"


TUNABLE = ("method", "threshold", "foreground", "grow", "seeds", "h", "min_size")
"""The settings the tune stage chooses; the config leaves them at null to take its choice."""


def resolve_params(section: Mapping, tuned: Mapping | None = None
                   ) -> tuple[SegmentParams, dict[str, str]]:
    """The settings to segment with, and where each came from.

    A value the config section sets (not null) wins; a :data:`TUNABLE`
    setting left at null takes the tuned value, else the built-in default
    (:class:`SegmentParams`'s). Tuned values apply only to the method (and
    seeds) they were tuned for: when the section sets another ``method`` or
    ``seeds``, every null setting takes its built-in default.

    Parameters
    ----------
    section : mapping
        The config's ``segment`` section (or part of it).
    tuned : mapping, optional
        Tuned settings (the ``params`` the tune stage wrote).

    Returns
    -------
    SegmentParams
        Checked.
    dict
        ``{setting: "config" | "tuned" | "default"}`` for every setting.

    Examples
    --------
    >>> params, sources = resolve_params({"threshold": 0.5},
    ...                                  {"method": "watershed", "threshold": 0.7,
    ...                                   "foreground": 0.55})
    >>> params.threshold, params.foreground, sources["threshold"], sources["foreground"]
    (0.5, 0.55, 'config', 'tuned')
    """
    base = SegmentParams()
    tuned = dict(tuned or {})

    def other(key):  # the config sets another value than the one tuned
        return section.get(key) not in (None, tuned.get(key, section.get(key)))

    method = section.get("method") or tuned.get("method")
    if other("method") or (method == "watershed" and other("seeds")):
        tuned = {}  # tuned for another method
    values, sources = {}, {}
    for f in fields(SegmentParams):
        key, given = f.name, section.get(f.name)
        if key in TUNABLE and given is None:
            if key in tuned:
                values[key], sources[key] = tuned[key], "tuned"
            else:
                values[key], sources[key] = getattr(base, key), "default"
        elif key in section:
            values[key], sources[key] = given, "config"
        else:
            values[key], sources[key] = getattr(base, key), "default"
    return SegmentParams(**values).check(), sources


def describe_sources(params: SegmentParams, sources: Mapping[str, str]) -> str:
    """One line: every setting with its value and where it came from."""
    return ", ".join(f"{key} {getattr(params, key)!r} ({sources[key]})"
                     for key in (f.name for f in fields(SegmentParams)))


def mode_of(n_classes: int) -> str:
    """The target mode of probabilities with ``n_classes`` channels."""
    modes = {2: "two_class", 3: "three_class"}
    if n_classes not in modes:
        raise ValueError(f"probabilities need 2 (background, cell) or 3 (background, "
                         f"interior, boundary) class channels, got {n_classes}")
    return modes[n_classes]


def default_grow(n_classes: int) -> int:
    """Pixels the separation targets took off each cell: the gap (two classes),
    plus the boundary (three classes)."""
    return 1 if mode_of(n_classes) == "two_class" else 2


def _face(ndim: int):
    from scipy import ndimage as ndi

    return ndi.generate_binary_structure(ndim, 1)


def _close_gaps(mask: np.ndarray) -> np.ndarray:
    """Binary closing by the face neighbourhood (a ball of one pixel): fills
    the gaps of up to two pixels the separation targets leave between
    touching cells. Outside the array counts as background."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask
    face = _face(mask.ndim)
    padded = np.pad(mask, 1)
    closed = ndi.binary_erosion(ndi.binary_dilation(padded, structure=face), structure=face)
    return closed[(slice(1, -1),) * mask.ndim]


def _grow(markers: np.ndarray, distance: float, mask: np.ndarray) -> np.ndarray:
    """Every unlabelled pixel of ``mask`` within ``distance`` pixels of a label
    takes the nearest label."""
    from scipy import ndimage as ndi

    if distance <= 0 or not markers.any() or markers.all():
        return markers
    d, index = ndi.distance_transform_edt(markers == 0, return_indices=True)
    grown = markers[tuple(index)]
    del index
    return np.where((markers == 0) & (d <= distance) & mask, grown, markers)


def segment_window(probabilities, *, params: SegmentParams = SegmentParams(),
                   spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Instances of one window, before the size filter and hole filling.

    Parameters
    ----------
    probabilities : ndarray of shape (K, *S)
        Class probabilities, K = 2 (background, cell) or 3 (background,
        interior, boundary).
    params : SegmentParams
    spacing : sequence of float, optional
        Pixel size per spatial axis (distance seeds are in these units).

    Returns
    -------
    labels : ndarray of int32, shape S
        Object ids 1..n, 0 = background.
    seeds : ndarray of bool, shape S
        The seed pixels (the objects' identities are decided there).
    """

    probs = np.asarray(probabilities, dtype=np.float32)
    return _segment(probs[0] <= 1.0 - params.foreground, probs[1], n_classes=probs.shape[0],
                    params=params, spacing=spacing)


def _segment(foreground: np.ndarray, cell: np.ndarray, *, n_classes: int,
             params: SegmentParams, spacing) -> tuple[np.ndarray, np.ndarray]:
    """:func:`segment_window` from the raw foreground (1 - P(background) at
    least the threshold) and the cell (interior) probability."""
    from scipy import ndimage as ndi

    ndim = cell.ndim
    grow = default_grow(n_classes) if params.grow is None else params.grow
    # the targets made the one-pixel ring where cells touch background: the
    # foreground is closed over such gaps
    foreground = _close_gaps(foreground)
    face = _face(ndim)
    if params.method == "components" or params.seeds == "classes":
        seeds = cell >= params.threshold
        markers, _ = ndi.label(seeds, structure=face)
        foreground |= seeds
        if params.method == "components":
            return _grow(markers, grow, foreground).astype(np.int32, copy=False), seeds
        elevation = 1.0 - cell
        del cell
    else:
        from skimage.morphology import h_maxima

        sampling = None if spacing is None else tuple(float(s) for s in spacing)
        distance = ndi.distance_transform_edt(foreground, sampling=sampling)
        seeds = h_maxima(distance, params.h).astype(bool) & foreground
        markers, _ = ndi.label(seeds, structure=np.ones((3,) * ndim, bool))
        elevation = -distance
    from skimage.segmentation import watershed

    labels = watershed(elevation, markers, mask=foreground, connectivity=1)
    return labels.astype(np.int32, copy=False), seeds


def fill_holes(labels, *, max_size: float | None = None,
               max_extent: Sequence[int] | None = None) -> np.ndarray:
    """Fill the holes of every object.

    A hole is a connected part of the background (any connectivity) that
    does not touch the array's border and whose face neighbours all belong
    to one object; it takes that object's id.

    Parameters
    ----------
    labels : ndarray of int, shape (M, N) or (P, M, N)
    max_size : float, optional
        Largest hole filled, in pixels (default: any).
    max_extent : sequence of int, optional
        Largest hole filled, as its bounding box's size per axis (the
        chunked version's halo bounds it).

    Returns
    -------
    ndarray, same shape and dtype
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    background = labels == 0
    if not background.any() or background.all():
        return labels.copy()
    comp, n = ndi.label(background, structure=np.ones((3,) * labels.ndim, bool))
    sizes = np.bincount(comp.ravel())
    candidate = np.ones(n + 1, bool)
    candidate[0] = False
    if max_size is not None:
        candidate &= sizes <= max_size
    for axis in range(labels.ndim):  # touching the border: not a hole
        for edge in (0, -1):
            candidate[np.unique(np.take(comp, edge, axis=axis))] = False
    out = labels.copy()
    if not candidate.any():
        return out
    face = _face(labels.ndim)
    boxes = ndi.find_objects(comp)
    for c in np.flatnonzero(candidate):
        box = boxes[c - 1]
        if max_extent is not None and any(s.stop - s.start > e for s, e in
                                          zip(box, max_extent, strict=True)):
            continue
        box = tuple(slice(s.start - 1, s.stop + 1) for s in box)  # inside: not at the border
        hole = comp[box] == c
        ring = ndi.binary_dilation(hole, structure=face) & ~hole
        around = np.unique(labels[box][ring])
        if around.size == 1 and around[0] != 0:
            out[box][hole] = around[0]
    return out


def _size_range(params: SegmentParams, spacing) -> tuple[float, float]:
    """The size range in pixels."""
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    low = params.min_size / voxel
    high = math.inf if params.max_size is None else params.max_size / voxel
    return low, high


def _hole_pixels(params: SegmentParams, spacing) -> float | None:
    if not params.fill_holes:
        return None
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    return params.fill_holes / voxel


def default_halo(params: SegmentParams, ndim: int) -> tuple[int, ...]:
    return (DEFAULT_HALO[params.method],) * ndim


def min_halo(params: SegmentParams, n_classes: int) -> int:
    """The least halo with which blocks see everything that decides their core:
    the gap closing (2 pixels) and the growth, plus one."""
    grow = default_grow(n_classes) if params.grow is None else params.grow
    return max(2, grow if params.method == "components" else 0) + 1


def segment_array(probabilities, *, params: SegmentParams = SegmentParams(),
                  spacing: Sequence[float] | None = None,
                  halo: Sequence[int] | None = None) -> np.ndarray:
    """Instance labels of a probability array in memory (the whole-image version).

    Parameters
    ----------
    probabilities : ndarray of shape (K, *S)
        Class probabilities, K = 2 or 3; see :func:`segment_window`.
    params : SegmentParams
        Method and settings; ``min_size``, ``max_size`` and ``fill_holes``
        are areas (2D) or volumes (3D) in the units of ``spacing``.
    spacing : sequence of float, optional
        Pixel size per spatial axis (default 1).
    halo : sequence of int, optional
        The halo :func:`segment_store` would use: holes as wide as it or
        wider along an axis are left open, as there. Default
        :data:`DEFAULT_HALO`.

    Returns
    -------
    ndarray of uint32, shape S
        Consecutive object ids 1..n, 0 = background.

    Examples
    --------
    >>> p = np.zeros((2, 1, 7), np.float32)
    >>> p[1, 0, [0, 1, 2, 5, 6]] = 0.9
    >>> p[0] = 1 - p[1]
    >>> segment_array(p, params=SegmentParams(min_size=0))
    array([[1, 1, 1, 0, 0, 2, 2]], dtype=uint32)
    """
    from skimage.segmentation import relabel_sequential

    params.check()
    probs = np.asarray(probabilities)
    ndim = probs.ndim - 1
    halo = default_halo(params, ndim) if halo is None else tuple(halo)
    labels, _ = segment_window(probs, params=params, spacing=spacing)
    low, high = _size_range(params, spacing)
    sizes = np.bincount(labels.ravel())
    drop = (sizes < low) | (sizes > high)
    drop[0] = False
    labels[drop[labels]] = 0
    hole = _hole_pixels(params, spacing)
    if hole:
        labels = fill_holes(labels, max_size=hole, max_extent=[h - 1 for h in halo])
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint32)
