"""Tests of the synthetic nuclei generator (unetpipe.inputs.synth)."""

import hashlib
import inspect

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from unetpipe.inputs.demo import demo_image
from unetpipe.inputs.synth import (
    DOMAINS,
    domain_options,
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


# --- irregular outlines -----------------------------------------------------

# sha256 of random_nuclei_labels(shape, spacing=spacing, rng=seed) recorded
# before the irregularity option existed: the plain ellipses must not move.
PLAIN_DIGESTS = {
    ((96, 128), None, 7): "620eaf251fe0426369a5f9f758ac085c6f2fee291d40568852867403e1e75b23",
    ((16, 64, 64), ANISO, 1): "6c999cd6e3c5588612b987a62eee97e72c5d8593532da28e5604cdb0959b9bc0",
}


def moment_ellipse_iou(mask):
    """IoU of a mask with the ellipse (ellipsoid) of the same first and second moments.

    A uniform ellipse with semi-axes a_k has covariance diag(a_k^2 / 4) in
    its own frame, so the ellipse is {x : (x - mean)^T C^-1 (x - mean) <= 4}.
    """
    coords = np.argwhere(mask).astype(float)
    mean = coords.mean(axis=0)
    inverse = np.linalg.inv(np.cov(coords, rowvar=False, bias=True))
    grid = np.indices([n + 8 for n in mask.shape]).reshape(mask.ndim, -1).T - 4.0
    delta = grid - mean
    inside = np.einsum("ni,ij,nj->n", delta, inverse, delta) <= 4.0
    padded = np.pad(mask, 4).ravel()
    return np.sum(inside & padded) / np.sum(inside | padded)


def isolated_objects(labels):
    """Masks of the objects that touch neither another object nor the border."""
    touching = {i for pair in touching_pairs(labels) for i in pair}
    masks = []
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or idx in touching:
            continue
        if all(0 < s.start and s.stop < n for s, n in zip(box, labels.shape, strict=True)):
            masks.append(labels[box] == idx)
    return masks


@pytest.mark.parametrize(("shape", "spacing", "seed"), list(PLAIN_DIGESTS))
def test_irregularity_zero_is_bit_identical_to_plain_ellipses(shape, spacing, seed):
    labels = random_nuclei_labels(shape, spacing=spacing, rng=seed, irregularity=0.0)
    assert hashlib.sha256(labels.tobytes()).hexdigest() == PLAIN_DIGESTS[shape, spacing, seed]
    image, labels = synthetic_nuclei(shape, spacing=spacing, seed=seed)
    image0, labels0 = synthetic_nuclei(shape, spacing=spacing, seed=seed, irregularity=0)
    np.testing.assert_array_equal(labels0, labels)
    np.testing.assert_array_equal(image0, image)


def test_irregularity_bends_outlines_but_keeps_the_size():
    plain = random_nuclei_labels((384, 384), radius=(12.0, 20.0), cluster_fraction=0.0, rng=3)
    lobed = random_nuclei_labels((384, 384), radius=(12.0, 20.0), cluster_fraction=0.0, rng=3,
                                 irregularity=0.5)
    fit_plain = [moment_ellipse_iou(m) for m in isolated_objects(plain)]
    fit_lobed = [moment_ellipse_iou(m) for m in isolated_objects(lobed)]
    assert len(fit_plain) >= 15 and len(fit_lobed) >= 15
    # ellipses are ellipses up to pixelation; lobed outlines are not
    assert np.median(fit_plain) > 0.97
    assert np.median(fit_lobed) < np.median(fit_plain) - 0.03
    # `radius` stays the mean radius: the lobes do not inflate the objects
    area_plain = np.median(np.bincount(plain.ravel())[1:])
    area_lobed = np.median(np.bincount(lobed.ravel())[1:])
    assert 0.8 < area_lobed / area_plain < 1.2
    # smooth: a few broad lobes, not a ragged edge, so the outline (pixels
    # with a background face neighbour) is hardly longer than an ellipse's
    def outline_over_circle(labels):
        ratios = [np.sum(m & ~ndi.binary_erosion(m)) / (2 * np.sqrt(np.pi * m.sum()))
                  for m in isolated_objects(labels)]
        return np.median(ratios)

    assert outline_over_circle(lobed) < 1.1 * outline_over_circle(plain)


@pytest.mark.parametrize(("shape", "spacing"), [((256, 256), None), ((24, 96, 96), ANISO)])
def test_irregular_labels_are_valid_and_touch_only_in_clusters(shape, spacing):
    labels = random_nuclei_labels(shape, spacing=spacing, irregularity=0.8, rng=2)
    assert_valid_labels(labels)
    plain = random_nuclei_labels(shape, spacing=spacing, rng=2)
    # lobes only add to the ellipses by which mates are placed: clusters still touch
    assert len(touching_pairs(labels)) >= 0.7 * len(touching_pairs(plain))
    # and unrelated objects keep their gap around the lobes
    for seed in range(3):
        loners = random_nuclei_labels(shape, spacing=spacing, irregularity=1.0,
                                      cluster_fraction=0.0, rng=seed)
        assert loners.max() > 10
        assert touching_pairs(loners) == set()


def test_irregularity_is_deterministic_and_leaves_the_image_model_alone():
    a = synthetic_nuclei((96, 96), seed=4, irregularity=0.4)
    b = synthetic_nuclei((96, 96), seed=4, irregularity=0.4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], synthetic_nuclei((96, 96), seed=4)[1])


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "lots"])
def test_bad_irregularity_raises(value):
    with pytest.raises(ValueError, match="irregularity"):
        random_nuclei_labels((32, 32), irregularity=value)


# --- named domains ----------------------------------------------------------


def small_shape(name):
    return (12, 48, 48) if len(DOMAINS[name]["shape"]) == 3 else (96, 96)


def domain_sample(name, seed=0, shape=None):
    options = domain_options(name)
    hint = options.pop("shape")
    return synthetic_nuclei(shape or hint, seed=seed, **options)


def contrast_and_noise(image, labels):
    """Median object signal above the background, and the background's noise."""
    image = image.astype(float)
    far = ~ndi.binary_dilation(labels > 0, iterations=6)
    inside = ndi.binary_erosion(labels > 0, iterations=2)
    level = np.median(image[far])
    return np.median(image[inside]) - level, image[far].std()


def edge_softness(image, labels):
    """Mean signal 1 px inside the objects over that 6 px inside (1 = no rim, low = soft)."""
    image = image.astype(float)
    level = np.median(image[~ndi.binary_dilation(labels > 0, iterations=6)])
    depth = np.rint(ndi.distance_transform_edt(labels > 0))
    return (image[depth == 1].mean() - level) / (image[depth == 6].mean() - level)


def pooled(name, measure, seeds=(0, 1)):
    return float(np.mean([measure(*domain_sample(name, seed)) for seed in seeds]))


def median_area(image, labels):
    return np.median(np.bincount(labels.ravel())[1:])


def snr(image, labels):
    signal, noise = contrast_and_noise(image, labels)
    return signal / noise


@pytest.mark.parametrize("name", list(DOMAINS))
def test_every_domain_generates_deterministically(name):
    shape = small_shape(name)
    image, labels = domain_sample(name, seed=3, shape=shape)
    assert image.shape == labels.shape == shape
    assert image.dtype == np.uint16 and labels.dtype == np.uint16
    assert_valid_labels(labels)
    again = domain_sample(name, seed=3, shape=shape)
    np.testing.assert_array_equal(again[0], image)
    np.testing.assert_array_equal(again[1], labels)
    other = domain_sample(name, seed=4, shape=shape)
    assert not np.array_equal(other[1], labels)


def test_domain_presets_are_well_formed_and_copied():
    assert {"demo", "small-blurry", "large-irregular", "soft-dense", "coarse-z-3d"} <= set(DOMAINS)
    for name, preset in DOMAINS.items():
        assert len(preset["shape"]) in (2, 3), name
        if "spacing" in preset:
            assert len(preset["spacing"]) == len(preset["shape"]), name
    options = domain_options("small-blurry")
    options["radius"] = (1.0, 2.0)
    options.pop("shape")
    assert DOMAINS["small-blurry"]["radius"] == (3.0, 6.0)
    assert "shape" in domain_options("small-blurry")


def test_demo_domain_is_what_the_demo_generates():
    options = domain_options("demo")
    shape = options.pop("shape")
    assert shape == tuple(inspect.signature(demo_image).parameters["train_shape"].default)
    image, labels = synthetic_nuclei(shape, seed=11, **options)
    plain_image, plain_labels = synthetic_nuclei(shape, seed=11)
    np.testing.assert_array_equal(image, plain_image)
    np.testing.assert_array_equal(labels, plain_labels)


def test_unknown_domain_raises_naming_the_known_ones():
    with pytest.raises(ValueError, match="small-blurry") as info:
        domain_options("small_blurry")
    assert "'small_blurry'" in str(info.value)
    assert all(name in str(info.value) for name in DOMAINS)


def test_small_blurry_has_small_nuclei_soft_edges_and_low_snr():
    assert pooled("small-blurry", median_area) < 0.4 * pooled("demo", median_area)
    assert pooled("small-blurry", snr) < 0.5 * pooled("demo", snr)

    def edge_gradient(image, labels):
        # steepness where objects meet the background, relative to their contrast
        gradient = ndi.gaussian_gradient_magnitude(image.astype(float), 1.0)
        edge = (labels > 0) & ndi.binary_dilation(labels == 0)
        return gradient[edge].mean() / contrast_and_noise(image, labels)[0]

    assert pooled("small-blurry", edge_gradient) < 0.85 * pooled("demo", edge_gradient)


def test_large_irregular_has_large_lobed_nuclei_of_spread_brightness():
    assert pooled("large-irregular", median_area) > 2.0 * pooled("demo", median_area)

    def ellipse_fit(image, labels):
        return np.median([moment_ellipse_iou(m) for m in isolated_objects(labels)])

    assert pooled("large-irregular", ellipse_fit) < pooled("demo", ellipse_fit) - 0.02

    def brightness_spread(image, labels):
        # spread of the per-nucleus median intensity above the camera offset
        values = ndi.median(image.astype(float) - 100.0, labels,
                            index=np.arange(1, int(labels.max()) + 1))
        return np.std(np.log(np.maximum(values, 1.0)))

    assert pooled("large-irregular", brightness_spread) > 1.5 * pooled("demo", brightness_spread)


def test_soft_dense_is_crowded_with_soft_edges_on_uneven_background():
    def fill(image, labels):
        return np.mean(labels > 0)

    def pairs_per_object(image, labels):
        return len(touching_pairs(labels)) / labels.max()

    def background_unevenness(image, labels):
        # large-scale spread of the background relative to the object contrast
        far = ~ndi.binary_dilation(labels > 0, iterations=6)
        smooth = ndi.gaussian_filter(image.astype(float), 8.0)
        return smooth[far].std() / contrast_and_noise(image, labels)[0]

    assert pooled("soft-dense", fill) > pooled("demo", fill) + 0.08
    assert pooled("soft-dense", pairs_per_object) > 1.2 * pooled("demo", pairs_per_object)
    assert pooled("soft-dense", edge_softness) < 0.85 * pooled("demo", edge_softness)
    assert pooled("soft-dense", background_unevenness) > 1.5 * pooled(
        "demo", background_unevenness)


def test_coarse_z_domain_is_anisotropic_3d():
    options = domain_options("coarse-z-3d")
    assert len(options["shape"]) == 3
    spacing = options["spacing"]
    assert spacing[0] >= 3 * spacing[1] and spacing[1] == spacing[2]
    image, labels = domain_sample("coarse-z-3d", seed=0)
    assert_valid_labels(labels)
    extents = np.array([[s.stop - s.start for s in box] for box in ndi.find_objects(labels)])
    z, y, x = np.median(extents, axis=0)
    assert z <= y / 3 and z <= x / 3  # a nucleus spans few planes
    assert 0.6 < (z * spacing[0]) / (y * spacing[1]) < 1.6  # but is round in micrometres
    assert len(touching_pairs(labels)) >= 15
    signal, noise = contrast_and_noise(image, labels)
    assert signal > 5 * noise
