"""Instances from class probabilities by connected components."""

import numpy as np
import pytest

from unetpipe.stages.instances import connected_instances


def one_hot(classes, k):
    return np.stack([(classes == c).astype(np.float32) for c in range(k)])


def test_two_class_components_are_face_connected():
    classes = np.array([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 1, 1],
        [0, 0, 1, 1, 1],  # touches the first blob only diagonally
        [0, 0, 0, 0, 0],
    ])
    labels = connected_instances(one_hot(classes, 2), mode="two_class")
    assert labels.dtype == np.int32
    assert labels.max() == 2
    assert len(np.unique(labels[:2, :2])) == 1 and labels[0, 0] != labels[2, 2]
    assert ((labels > 0) == (classes == 1)).all()


def test_min_size_drops_fragments_and_relabels():
    classes = np.zeros((6, 8), int)
    classes[0:3, 0:3] = 1  # 9 px
    classes[5, 7] = 1  # 1 px
    labels = connected_instances(one_hot(classes, 2), mode="two_class", min_size=2)
    assert labels.max() == 1 and labels[5, 7] == 0 and (labels[0:3, 0:3] == 1).all()


def test_three_class_grows_into_boundary_only():
    classes = np.zeros((9, 9), int)
    classes[1:8, 1:8] = 2  # boundary ring ...
    classes[3:6, 3:6] = 1  # ... around an interior
    classes[0, 0] = 2  # a stray boundary pixel far away stays background
    labels = connected_instances(one_hot(classes, 3), mode="three_class", grow=2)
    assert labels.max() == 1
    assert (labels[2:7, 2:7] == 1).all()  # grown by 1 and 2 pixels
    assert labels[1, 1] == 0  # the ring corner is 2*sqrt(2) > 2 from the interior
    assert labels[0, 0] == 0


def test_wrong_channel_count():
    with pytest.raises(ValueError, match="3 class channels"):
        connected_instances(np.zeros((2, 4, 4)), mode="three_class")
    with pytest.raises(ValueError, match="mode"):
        connected_instances(np.zeros((2, 4, 4)), mode="other")
