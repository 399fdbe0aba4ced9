"""Tests of the synthetic nuclei generator (unetpipe.inputs.synth)."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from unetpipe.inputs.synth import (
    random_nuclei_labels,
    render_nuclei,
    synthetic_nuclei,
    touching_pairs,
)

ANISO = (2.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def sample_2d():
    return synthetic_nuclei((512, 512), seed=0)


@pytest.fixture(scope="module")
def sample_3d():
    return synthetic_nuclei((40, 128, 128), seed=0)


@pytest.fixture(scope="module")
def sample_aniso():
    return synthetic_nuclei((32, 128, 128), spacing=ANISO, seed=0)


def brute_force_pairs(labels):
    """Reference for touching_pairs: explicit loop over face neighbours."""
    pairs = set()
    for index in zip(*np.nonzero(labels), strict=True):
        a = labels[index]
        for axis in range(labels.ndim):
            other = list(index)
            other[axis] += 1
            if other[axis] < labels.shape[axis]:
                b = labels[tuple(other)]
                if b and b != a:
                    pairs.add((int(min(a, b)), int(max(a, b))))
    return pairs


def assert_valid_labels(labels):
    n = int(labels.max())
    assert n > 0
    present = np.unique(labels)
    assert present[0] == 0
    np.testing.assert_array_equal(present[1:], np.arange(1, n + 1))
    structure = ndi.generate_binary_structure(labels.ndim, 1)
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        _, count = ndi.label(labels[box] == idx, structure=structure)
        assert count == 1, f"object {idx} has {count} face-connected components"


def shared_boundary(labels):
    shared = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        s = np.moveaxis(shared, axis, 0)
        contact = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
        s[:-1] |= contact
        s[1:] |= contact
    return shared


# --- determinism ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(96, 128), (12, 48, 64)])
def test_same_seed_is_bit_identical_and_other_seed_differs(shape):
    image_a, labels_a = synthetic_nuclei(shape, seed=7)
    image_b, labels_b = synthetic_nuclei(shape, seed=7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    image_c, labels_c = synthetic_nuclei(shape, seed=8)
    assert not np.array_equal(labels_a, labels_c)
    assert not np.array_equal(image_a, image_c)


def test_rng_none_equals_seed_zero_and_global_state_is_untouched():
    np.random.seed(123)  # noqa: NPY002 - the point: global state stays untouched
    state = np.random.get_state()  # noqa: NPY002
    labels = random_nuclei_labels((96, 96))
    np.testing.assert_array_equal(labels, random_nuclei_labels((96, 96), rng=0))
    np.testing.assert_array_equal(
        labels, random_nuclei_labels((96, 96), rng=np.random.default_rng(0))
    )
    np.testing.assert_array_equal(render_nuclei(labels), render_nuclei(labels, rng=0))
    image, labels0 = synthetic_nuclei((96, 96))
    image_s, labels_s = synthetic_nuclei((96, 96), seed=0)
    np.testing.assert_array_equal(image, image_s)
    np.testing.assert_array_equal(labels0, labels_s)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


def test_synthetic_labels_match_generator_and_ignore_imaging_options():
    image, labels = synthetic_nuclei((96, 96), seed=5, radius=(5.0, 8.0))
    np.testing.assert_array_equal(
        labels, random_nuclei_labels((96, 96), radius=(5.0, 8.0), rng=5)
    )
    bright, labels_bright = synthetic_nuclei((96, 96), seed=5, radius=(5.0, 8.0), photons=800)
    np.testing.assert_array_equal(labels, labels_bright)
    inside = labels > 0
    assert bright[inside].mean() > 2.5 * image[inside].mean() - 1.5 * 100


def test_sequence_seed_is_deterministic_and_distinct():
    a = synthetic_nuclei((64, 64), seed=[3, 1, 0])
    b = synthetic_nuclei((64, 64), seed=[3, 1, 0])
    c = synthetic_nuclei((64, 64), seed=[3, 1, 1])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


# --- touching_pairs ---------------------------------------------------------


def test_touching_pairs_2d_literal_ignores_diagonals():
    labels = np.array(
        [
            [1, 1, 0, 2],
            [1, 1, 0, 2],
            [0, 0, 3, 0],
            [5, 5, 3, 4],
        ]
    )
    # 1-3 and 2-3 meet only at corners; 5 is left of 3, so order is sorted
    assert touching_pairs(labels) == {(3, 5), (3, 4)}
    assert all(type(i) is int for pair in touching_pairs(labels) for i in pair)


def test_touching_pairs_3d_literal():
    labels = np.zeros((2, 2, 2), dtype=np.uint16)
    labels[0, 0, 0] = 1
    labels[1, 0, 0] = 2  # z neighbour of 1
    labels[0, 1, 1] = 4  # diagonal to 1 (y and x differ)
    labels[1, 1, 1] = 3  # z neighbour of 4, diagonal to 2
    assert touching_pairs(labels) == {(1, 2), (3, 4)}


def test_touching_pairs_empty_and_single():
    assert touching_pairs(np.zeros((4, 5), dtype=np.uint16)) == set()
    assert touching_pairs(np.ones((3, 3, 3), dtype=np.uint16)) == set()


def test_touching_pairs_matches_brute_force_on_generated_labels():
    labels = random_nuclei_labels((128, 128), rng=3)
    pairs = touching_pairs(labels)
    assert pairs == brute_force_pairs(labels)
    assert len(pairs) > 5


# --- object placement -------------------------------------------------------


def test_2d_labels_are_valid_and_touch_on_purpose(sample_2d):
    _, labels = sample_2d
    assert labels.dtype == np.uint16 and labels.shape == (512, 512)
    assert_valid_labels(labels)
    n = int(labels.max())
    assert 200 < n < 500
    assert 0.2 < np.mean(labels > 0) < 0.4
    pairs = touching_pairs(labels)
    assert len(pairs) >= 40  # dozens of touching pairs
    in_pair = {i for pair in pairs for i in pair}
    assert (n - len(in_pair)) / n > 0.1  # and a healthy share of loners (~16 %)


def test_3d_labels_are_valid_and_touch(sample_3d):
    _, labels = sample_3d
    assert labels.dtype == np.uint16 and labels.shape == (40, 128, 128)
    assert_valid_labels(labels)
    n = int(labels.max())
    pairs = touching_pairs(labels)
    assert len(pairs) >= 15
    # a small stack holds few groups, so only ask for some loners here
    assert n - len({i for p in pairs for i in p}) >= 2


def test_no_clusters_means_no_touching():
    labels = random_nuclei_labels((256, 256), cluster_fraction=0.0, rng=1)
    assert labels.max() > 30
    assert touching_pairs(labels) == set()
    labels3 = random_nuclei_labels((24, 96, 96), spacing=ANISO, cluster_fraction=0.0, rng=1)
    assert labels3.max() > 10
    assert touching_pairs(labels3) == set()


def test_anisotropic_objects_span_fewer_slices(sample_aniso):
    _, labels = sample_aniso
    assert_valid_labels(labels)
    extents = np.array(
        [[s.stop - s.start for s in box] for box in ndi.find_objects(labels)], dtype=float
    )
    z, y, x = extents.mean(axis=0)
    assert z < y / 2 and z < x / 2
    # in physical units the objects are about as deep as they are tall
    assert 0.6 < (z * ANISO[0]) / (y * ANISO[1]) < 1.6
    assert len(touching_pairs(labels)) >= 15


def test_radius_is_in_pixels_of_the_finest_axis():
    small = random_nuclei_labels((256, 256), radius=(4.0, 5.0), rng=2)
    large = random_nuclei_labels((256, 256), radius=(10.0, 12.0), rng=2)
    area_small = np.bincount(small.ravel())[1:]
    area_large = np.bincount(large.ravel())[1:]
    # nominal areas: pi * 4.5^2 = 64 and pi * 11^2 = 380 pixels
    assert 40 < np.median(area_small) < 80
    assert 300 < np.median(area_large) < 450


# --- rendering --------------------------------------------------------------


def test_image_matches_labels(sample_2d):
    image, labels = sample_2d
    assert image.dtype == np.uint16 and image.shape == labels.shape
    far = ~ndi.binary_dilation(labels > 0, iterations=6)
    background = image[far].astype(float)
    level, noise = np.median(background), background.std()
    assert 95 < level < 140  # camera offset ~100 plus a dim background
    assert image[labels > 0].mean() > level + 3 * noise
    smooth = ndi.gaussian_filter(image.astype(float), 1.0)
    mask = smooth > threshold_otsu(smooth)
    truth = labels > 0
    assert np.sum(mask & truth) / np.sum(mask | truth) > 0.8


def test_3d_image_is_brighter_inside(sample_3d):
    image, labels = sample_3d
    assert image.dtype == np.uint16 and image.shape == labels.shape
    assert image[labels > 0].mean() > 1.5 * image[labels == 0].mean()


@pytest.mark.parametrize("name", ["sample_2d", "sample_aniso"])
def test_shared_boundaries_are_dimmer_than_interiors(name, request):
    image, labels = request.getfixturevalue(name)
    shared = shared_boundary(labels)
    in_pair = np.zeros(int(labels.max()) + 1, dtype=bool)
    in_pair[[i for pair in touching_pairs(labels) for i in pair]] = True
    interior = in_pair[labels] & ~ndi.binary_dilation(~in_pair[labels] | shared, iterations=3)
    assert shared.sum() > 100 and interior.sum() > 100
    assert image[shared].mean() < 0.85 * image[interior].mean()


def test_imaging_options_change_the_image():
    labels = random_nuclei_labels((128, 128), rng=4)
    base = render_nuclei(labels, rng=1)
    quiet = render_nuclei(labels, rng=1, read_noise=0.0, background=0.0, offset=50.0)
    assert quiet[labels == 0].mean() < base[labels == 0].mean() - 40
    sharp = render_nuclei(labels, rng=1, psf_sigma=0.0, texture=0.0, rim_depth=0.0,
                          brightness_spread=0.0, shading=0.0, photons=1000.0)
    inside = ndi.binary_erosion(labels > 0, iterations=2)
    # flat, bright objects: interior close to photons + offset + background
    assert abs(np.median(sharp[inside]) - 1115) < 60
    with pytest.raises(TypeError, match="photon"):
        render_nuclei(labels, photon=10)
    with pytest.raises(ValueError, match="read_noise"):
        render_nuclei(labels, read_noise=-1)


def test_render_accepts_sparse_ids_without_background():
    labels = random_nuclei_labels((96, 96), rng=6).astype(np.uint32)
    sparse = np.where(labels > 0, labels * 1_000_003 + 7, 5)  # no zero at all
    image = render_nuclei(sparse, rng=0, background=0.0)
    assert image.shape == labels.shape
    # every pixel is an object now, so the formerly empty area is bright too
    assert image[labels == 0].mean() > 150


# --- argument checking ------------------------------------------------------


@pytest.mark.parametrize("shape", [(64,), (2, 8, 8, 8), (0, 64), (64, -1), (64.0, 64), ()])
def test_bad_shapes_raise_value_error_naming_the_shape(shape):
    with pytest.raises(ValueError, match=repr(shape).replace("(", r"\(").replace(")", r"\)")):
        random_nuclei_labels(shape)
    with pytest.raises(ValueError, match="shape"):
        synthetic_nuclei(shape)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="spacing"):
        random_nuclei_labels((32, 32, 32), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        random_nuclei_labels((32, 32), spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="radius"):
        random_nuclei_labels((32, 32), radius=(8.0, 4.0))
    with pytest.raises(ValueError, match="fill_fraction"):
        random_nuclei_labels((32, 32), fill_fraction=1.5)
    with pytest.raises(ValueError, match="seed"):
        synthetic_nuclei((32, 32), seed=-1)
    with pytest.raises(ValueError, match="labels"):
        render_nuclei(np.zeros(5, dtype=np.uint16))
