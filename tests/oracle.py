"""The pinned weight-map definition, written plainly: the tests' oracle.

Deliberately independent of ``unetpipe.weights``: neighbours via np.roll,
one exact distance transform of the whole image per cell.
"""

import numpy as np
from scipy import ndimage as ndi


def _neighbour_differs(labels, keep):
    """Pixels with a face neighbour (inside the image) for which ``keep(a, b)`` holds."""
    out = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        for shift in (1, -1):
            neighbour = np.roll(labels, shift, axis=axis)
            valid = np.ones(labels.shape, bool)
            edge = [slice(None)] * labels.ndim
            edge[axis] = 0 if shift == 1 else -1
            valid[tuple(edge)] = False  # np.roll wraps around: no neighbour there
            out |= valid & keep(labels, neighbour)
    return out


def weight_map_oracle(labels, *, w0=10.0, sigma=5.0, spacing=None, class_balance=True,
                      mode="two_class"):
    """Return (targets, weights, border) by the definition."""
    labels = np.asarray(labels).astype(np.int64) if labels.dtype != np.uint64 else labels
    fg = labels != 0
    contact = _neighbour_differs(labels, lambda a, b: (a != 0) & (b != 0) & (a != b))
    kept = fg & ~contact
    cells = np.where(kept, labels, 0)
    targets = kept.astype(np.uint8)
    n_classes = 2
    if mode == "three_class":
        boundary = kept & _neighbour_differs(cells, lambda a, b: a != b)
        targets[boundary] = 2
        n_classes = 3
    ids = [i for i in np.unique(cells) if i != 0]
    border = np.zeros(labels.shape)
    if len(ids) >= 2:
        distances = [ndi.distance_transform_edt(cells != i, sampling=spacing) for i in ids]
        stack = np.sort(np.stack(distances), axis=0)
        total = stack[0] + stack[1]
        border = np.where(~kept, w0 * np.exp(-total**2 / (2 * sigma**2)), 0.0)
    counts = np.bincount(targets.ravel(), minlength=n_classes)
    wc = np.ones(n_classes)
    if class_balance and np.all(counts > 0):
        wc = labels.size / (n_classes * counts)
    return targets, wc[targets] + border, border
