"""Probability maps made from labels, written as unetpipe would, and a relabelling-blind
comparison: shared by the segmentation, reader and widget tests."""

import numpy as np
from numpy.testing import assert_array_equal
from scipy import ndimage as ndi

from unetpipe.io import ngff
from unetpipe.io.images import set_multiscale_metadata
from unetpipe.stages.weights import targets_for_mode


def probabilities_from_labels(labels, mode="three_class", sigma=1.0, noise=0.1, seed=0):
    """Class probabilities a network might give: the labels' targets, blurred, noisy."""
    targets = targets_for_mode(labels, mode)
    k = 2 if mode == "two_class" else 3
    rng = np.random.default_rng(seed)
    p = np.stack([ndi.gaussian_filter((targets == c).astype(np.float32), sigma)
                  for c in range(k)])
    p += rng.uniform(0, noise, p.shape).astype(np.float32)
    return (p / p.sum(0, keepdims=True)).astype(np.float32)


def write_probabilities(path, probs, *, spacing=None, chunks=None, version="0.5", origin=None,
                        attrs=None):
    """Probabilities as a store in NGFF ``version``, placed at ``origin``; ``attrs``
    (e.g. the preprocessed image as ``source``) go under ``unetpipe``, and their
    ``classes`` name the channels, as predict writes them."""
    root = ngff.new_group(path, version)
    spatial = "zyx"[-(probs.ndim - 1):]
    ngff.create_array(root, "0", shape=probs.shape, dtype=probs.dtype, axes="c" + spatial,
                      chunks=(probs.shape[0], *(chunks or probs.shape[1:])))[...] = probs
    set_multiscale_metadata(root, axes="c" + spatial, unit="micrometer" if spacing else None,
                            scales=[[1.0, *(spacing or [1.0] * (probs.ndim - 1))]],
                            translations=[[0.0, *origin]] if origin is not None else None,
                            name="probabilities",
                            channel_names=(attrs or {}).get("classes"))
    if attrs is not None:
        root.attrs["unetpipe"] = {"stage": "predict", **attrs}
    return path


def assert_same_up_to_relabelling(expected, actual):
    """Equal but for the ids: one-to-one, the same background, ids consecutive."""
    assert expected.shape == actual.shape
    assert_array_equal(expected == 0, actual == 0)
    pairs = np.unique(np.stack([expected.ravel(), actual.ravel()]), axis=1)
    pairs = pairs[:, pairs[0] > 0]
    assert np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size
    assert actual.max() == pairs.shape[1]  # consecutive ids
