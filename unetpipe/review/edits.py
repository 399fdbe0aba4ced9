"""Pure edits of instance labels: an array in, a new array out.

:func:`delete_objects`, :func:`merge_objects` and :func:`split_object` are what
the review widget's buttons do; :func:`changed_ids` tells a save which objects
an edit touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ids(ids) -> np.ndarray:
    out = np.unique(np.asarray(list(ids) if not np.isscalar(ids) else [ids], dtype=np.int64))
    if out.size and out.min() <= 0:
        raise ValueError(f"object ids must be positive, got {out.tolist()}")
    return out


def delete_objects(labels, ids) -> np.ndarray:
    """Remove objects: their pixels become background.

    Parameters
    ----------
    labels : ndarray of int, shape (M, N) or (P, M, N)
        Instance labels, 0 = background.
    ids : int or iterable of int
        The objects to remove.

    Returns
    -------
    ndarray
        A new array of the same shape and dtype.

    Examples
    --------
    >>> delete_objects(np.array([[1, 2], [2, 0]]), [2]).tolist()
    [[1, 0], [0, 0]]
    """
    labels = np.asarray(labels)
    out = labels.copy()
    out[np.isin(labels, _ids(ids))] = 0
    return out


def merge_objects(labels, ids, *, into: int | None = None) -> np.ndarray:
    """Join objects into one.

    Parameters
    ----------
    labels : ndarray of int, shape (M, N) or (P, M, N)
        Instance labels, 0 = background.
    ids : iterable of int
        The objects to join (at least two).
    into : int, optional
        The id of the joined object; default the smallest of ``ids``.

    Returns
    -------
    ndarray
        A new array of the same shape and dtype.

    Examples
    --------
    >>> merge_objects(np.array([[1, 2], [3, 0]]), [3, 2]).tolist()
    [[1, 2], [2, 0]]
    """
    ids = _ids(ids)
    if ids.size < 2:
        raise ValueError(f"merging needs at least two objects, got {ids.tolist()}")
    labels = np.asarray(labels)
    out = labels.copy()
    out[np.isin(labels, ids)] = int(ids.min()) if into is None else int(into)
    return out


def split_object(labels, seeds, *, new_ids: Sequence[int], label: int | None = None,
                 elevation=None, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Split one object into pieces grown from seed points (a watershed).

    Parameters
    ----------
    labels : ndarray of int, shape (M, N) or (P, M, N)
        Instance labels, 0 = background.
    seeds : array-like of shape (K, labels.ndim)
        Seed positions in pixel indices (rounded to the nearest pixel), at
        least two, all inside the object.
    new_ids : sequence of int
        One new id per seed, for the piece grown from it. Seeds with the
        same id grow one piece.
    label : int, optional
        The object to split; default the object under the seeds.
    elevation : ndarray of labels.shape, optional
        The landscape the pieces grow over, lowest first (e.g. ``1 - P(cell)``
        or the inverted image). Default: the negated distance to the object's
        border (in physical units with ``spacing``), which cuts at necks.
    spacing : sequence of float, optional
        Pixel size per axis, for the default elevation.

    Returns
    -------
    ndarray
        A new array: only the object's pixels change; each gets the id of
        the piece it joins. Pixels the watershed cannot reach from a seed
        (parts of the object not connected to any seed) join the nearest
        piece, so the pieces cover the object exactly.

    Raises
    ------
    ValueError
        Fewer than two seeds, ``new_ids`` of the wrong length, or a seed
        outside the object or the image.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    labels = np.asarray(labels)
    pts = np.rint(np.asarray(seeds, dtype=np.float64)).astype(np.int64).reshape(-1, labels.ndim)
    if len(pts) < 2:
        raise ValueError(f"splitting needs at least two seeds, got {len(pts)}")
    if len(new_ids) != len(pts):
        raise ValueError(f"{len(new_ids)} new ids for {len(pts)} seeds")
    shape = np.array(labels.shape)
    outside = [p.tolist() for p in pts if np.any(p < 0) or np.any(p >= shape)]
    if outside:
        raise ValueError(f"seeds {outside} lie outside the image of shape {labels.shape}")
    under = labels[tuple(pts.T)]
    if label is None:
        if under[0] == 0:
            raise ValueError(f"the seed at {pts[0].tolist()} lies on background")
        label = int(under[0])
    bad = [p.tolist() for p, u in zip(pts, under, strict=True) if u != label]
    if bad:
        raise ValueError(f"seeds {bad} lie outside object {label}")
    mask_full = labels == label
    box = ndi.find_objects(mask_full.astype(np.uint8))[0]
    mask = mask_full[box]
    origin = np.array([s.start for s in box])
    markers = np.zeros(mask.shape, np.int64)
    ids = np.asarray(new_ids, dtype=np.int64)
    markers[tuple((pts - origin).T)] = ids
    if elevation is None:
        elevation = -ndi.distance_transform_edt(mask, sampling=spacing)
    else:
        elevation = np.asarray(elevation, dtype=np.float64)[box]
    pieces = watershed(elevation, markers, mask=mask, connectivity=1)
    unreached = mask & (pieces == 0)
    if unreached.any():
        _, index = ndi.distance_transform_edt(pieces == 0, sampling=spacing,
                                              return_indices=True)
        pieces[unreached] = pieces[tuple(i[unreached] for i in index)]
    out = labels.copy()
    out[box][mask] = pieces[mask].astype(labels.dtype)
    return out


def changed_ids(before, after) -> np.ndarray:
    """Ids of the objects whose pixels differ between two label arrays (sorted, no 0)."""
    before, after = np.asarray(before), np.asarray(after)
    diff = before != after
    ids = np.union1d(np.unique(before[diff]), np.unique(after[diff]))
    return ids[ids != 0].astype(np.int64)
