"""Training augmentation (unetpipe.nn.transforms): values against brute-force oracles."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.nn.transforms import Augment, elastic_displacement, flip_rot90, intensity, warp


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_batch(shape, *, n=2, channels=1, seed=0, classes=3, dtype=torch.uint8):
    g = gen(seed)
    image = torch.rand((n, channels, *shape), generator=g)
    targets = torch.randint(0, classes, (n, *shape), generator=g).to(dtype)
    weights = torch.rand((n, *shape), generator=g) + 0.5
    return image, targets, weights


def nuclei_batch(shape, *, seed=1, blur=0.5):
    """Foreground targets of synthetic nuclei and an image rendered from them."""
    _, labels = synthetic_nuclei(shape, seed=seed)
    fg = labels > 0
    # A slight blur: a rendered image whose 0.5 level set is the foreground.
    smooth = ndi.gaussian_filter(fg.astype(np.float32), blur)
    assert ((smooth > 0.5) == fg).all()
    image = torch.from_numpy(smooth)[None, None]
    targets = torch.from_numpy(fg.astype(np.uint8))[None]
    weights = torch.ones((1, *shape))
    return image, targets, weights, labels


def torch_cubic_1d(points, size):
    """(points, size) weights of torch's own bicubic upsampling (align_corners=True)."""
    eye = torch.eye(points, dtype=torch.float64)[:, None, :, None]
    out = F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=True)
    return out[:, 0, :, 0].numpy()


def mirror(index, size):
    """Reflect integer indices about the border pixel centres (-1 -> 1, size -> size - 2)."""
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index > size - 1, period - index, index)


def keys_cubic(s, a=-0.75):
    s = np.abs(s)
    return np.where(s <= 1, ((a + 2) * s - (a + 3)) * s * s + 1,
                    np.where(s < 2, ((a * s - 5 * a) * s + 8 * a) * s - 4 * a, 0.0))


def bicubic_oracle(image, y, x):
    """Keys cubic convolution of a 2D numpy image at positions (y, x), mirrored taps."""
    out = np.zeros(y.shape)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    for i in range(-1, 3):
        for j in range(-1, 3):
            wy, wx = keys_cubic(y - (y0 + i)), keys_cubic(x - (x0 + j))
            out += wy * wx * image[mirror(y0 + i, image.shape[0]), mirror(x0 + j, image.shape[1])]
    return out


def positions(displacement):
    """Sampling positions p + d(p) as numpy, shape (ndim, *S)."""
    d = displacement.double().numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in d.shape[1:]], indexing="ij"))
    return grid + d


# ---------------------------------------------------------------------------
# elastic displacement
# ---------------------------------------------------------------------------


def test_displacement_shapes_and_batch():
    single = elastic_displacement((20, 30), generator=gen(3))
    one = elastic_displacement((20, 30), batch=1, generator=gen(3))
    batch = elastic_displacement((20, 30), batch=4, generator=gen(3))
    volume = elastic_displacement((5, 6, 7), batch=2, generator=gen(3), dtype=torch.float64)
    assert single.shape == (2, 20, 30) and single.dtype == torch.float32
    assert batch.shape == (4, 2, 20, 30)
    assert volume.shape == (2, 3, 5, 6, 7) and volume.dtype == torch.float64
    assert one.shape == (1, 2, 20, 30) and torch.equal(one[0], single)
    assert not torch.equal(batch[1], batch[0])


def test_displacement_is_the_drawn_value_at_control_points():
    sigma, shape = 7.0, (33, 65)
    field = elastic_displacement(shape, sigma=sigma, generator=gen(5))
    # documented draw: ndim * grid**ndim normal numbers from the generator, times sigma
    drawn = torch.randn((1, 2, 3, 3), generator=gen(5))[0] * sigma
    at_controls = field[:, ::16, ::32]  # rows 0, 16, 32; columns 0, 32, 64
    assert at_controls.shape == (2, 3, 3)
    assert torch.equal(at_controls, drawn)


@pytest.mark.parametrize("shape", [(33, 41), (40, 31)])
def test_displacement_2d_is_torch_bicubic(shape):
    field = elastic_displacement(shape, sigma=10.0, grid=4, batch=3, generator=gen(2))
    drawn = torch.randn((3, 2, 4, 4), generator=gen(2)) * 10.0
    expected = F.interpolate(drawn, size=shape, mode="bicubic", align_corners=True)
    assert (field - expected).abs().max() < 1e-4


def test_displacement_3d_is_separable_cubic():
    shape, sigma = (9, 21, 17), 5.0
    field = elastic_displacement(shape, sigma=sigma, batch=2, generator=gen(8)).double().numpy()
    drawn = (torch.randn((2, 3, 3, 3, 3), generator=gen(8)) * sigma).double().numpy()
    wz, wy, wx = (torch_cubic_1d(3, n) for n in shape)
    expected = np.einsum("ia,jb,kc,nmijk->nmabc", wz, wy, wx, drawn)
    assert np.abs(field - expected).max() < 1e-4


@pytest.mark.parametrize("sigma", [10.0, 4.0])
def test_displacement_statistics(sigma):
    field = elastic_displacement((17, 17), sigma=sigma, batch=2000, generator=gen(11))
    controls = field[:, :, ::8, ::8]  # corners, edge midpoints, centre
    values = controls.double()
    assert abs(values.mean().item()) < 0.05 * sigma
    assert abs(values.std().item() / sigma - 1) < 0.05
    # each control point and component on its own too (2000 draws each)
    per_point = values.std(dim=0) / sigma
    assert ((per_point - 1).abs() < 0.1).all()
    # between control points the field is an average: less spread
    between = field[:, :, 4, 4].double().std().item()
    assert between < 0.9 * sigma


def test_displacement_is_smooth():
    sigma, spacing = 10.0, 64
    field = elastic_displacement((129, 129), sigma=sigma, batch=8, generator=gen(4))
    controls = field[:, :, ::spacing, ::spacing]
    steps_between_controls = max(controls.diff(dim=d).abs().max().item() for d in (2, 3))
    steps_between_pixels = max(field.diff(dim=d).abs().max().item() for d in (2, 3))
    # a smooth interpolant changes at most a little faster than the straight line
    assert steps_between_pixels <= 2 * steps_between_controls / spacing
    assert steps_between_pixels < 0.1 * steps_between_controls


def test_displacement_zero_sigma_and_bad_options():
    assert torch.equal(elastic_displacement((8, 9), sigma=0.0, generator=gen()),
                       torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="sigma"):
        elastic_displacement((8, 9), sigma=-1.0)
    with pytest.raises(ValueError, match="grid"):
        elastic_displacement((8, 9), grid=1)
    with pytest.raises(ValueError, match="shape"):
        elastic_displacement((8,))
    with pytest.raises(ValueError, match="batch"):
        elastic_displacement((8, 9), batch=-1)
    with pytest.raises(ValueError, match="dtype"):
        elastic_displacement((8, 9), dtype=torch.int64)


# ---------------------------------------------------------------------------
# warp
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(128, 128), (24, 64, 64)])
def test_warp_keeps_image_and_targets_aligned(shape):
    image, targets, weights, _ = nuclei_batch(shape)
    agree, agree_other = [], []
    for seed in range(3):
        field = elastic_displacement(shape, sigma=10.0, generator=gen(seed))
        other = elastic_displacement(shape, sigma=10.0, generator=gen(seed + 100))
        out_image, out_targets, _ = warp(image, targets, weights, field)
        other_image = warp(image, targets, weights, other)[0]
        fg = out_targets[0] == 1
        agree.append(((out_image[0, 0] > 0.5) == fg).double().mean().item())
        agree_other.append(((other_image[0, 0] > 0.5) == fg).double().mean().item())
        assert 0.1 < fg.double().mean() < 0.6  # the nuclei are still there
    assert min(agree) >= 0.98
    assert max(agree_other) < 0.85  # the check has power


@pytest.mark.parametrize("shape", [(128, 128), (24, 64, 64)])
def test_warp_keeps_the_label_set(shape):
    image, _, weights, labels = nuclei_batch(shape)
    ids = torch.from_numpy(labels.astype(np.int64))[None]
    field = elastic_displacement(shape, sigma=10.0, generator=gen(6))
    out = warp(image, ids, weights, field)[1]
    assert out.dtype == torch.int64
    before, after = set(np.unique(labels).tolist()), set(out.unique().tolist())
    assert after <= before
    assert len(after) >= 0.8 * len(before)


def test_warp_targets_exact_for_any_integer_dtype():
    shape = (30, 40)
    field = elastic_displacement(shape, sigma=6.0, generator=gen(1))
    image, base, weights = random_batch(shape, n=1, classes=5)
    reference = warp(image, base.long(), weights, field)[1]
    # ids that float32 cannot hold: a float round trip would change them
    huge = base.long() + 2**40 + 1
    assert torch.equal(warp(image, huge, weights, field)[1], reference + 2**40 + 1)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        out = warp(image, base.to(dtype), weights, field)[1]
        assert out.dtype == dtype and torch.equal(out.long(), reference)
    out = warp(image, base > 2, weights, field)[1]
    assert out.dtype == torch.bool and torch.equal(out, reference > 2)


@pytest.mark.parametrize(("shape", "axis"), [((20, 24), 1), ((20, 24), 0),
                                             ((10, 12, 14), 0), ((10, 12, 14), 2)])
def test_warp_constant_shift(shape, axis):
    shift = 3
    image, targets, weights = random_batch(shape, n=2, channels=2, classes=50)
    field = torch.zeros((len(shape), *shape))
    field[axis] = shift
    out_image, out_targets, out_weights = warp(image, targets, weights, field)
    size = shape[axis]
    # output(p) = input(p + 3): interior is input moved back by 3 ...
    inner = [slice(None)] * len(shape)
    inner[axis] = slice(0, size - shift)
    for out, inp, lead in ((out_image, image, 2), (out_targets, targets, 1),
                           (out_weights, weights, 1)):
        moved = np.roll(inp.numpy(), -shift, axis=lead + axis)
        got = out.numpy()[(Ellipsis, *inner)]
        np.testing.assert_allclose(got, moved[(Ellipsis, *inner)], atol=1e-4, rtol=0)
        # ... and past the border the positions are reflected: size + k -> size - 2 - k
        for p in range(size - shift, size):
            src = 2 * (size - 1) - (p + shift)
            np.testing.assert_allclose(np.take(out.numpy(), p, axis=lead + axis),
                                       np.take(inp.numpy(), src, axis=lead + axis),
                                       atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(64, 48), (256, 256), (12, 40, 36)])
def test_warp_zero_field_is_identity(shape):
    image, targets, weights = random_batch(shape, n=2, channels=2, classes=200,
                                           dtype=torch.int64)
    out_image, out_targets, out_weights = warp(image, targets, weights,
                                               torch.zeros((len(shape), *shape)))
    assert (out_image - image).abs().max() < 1e-5
    assert torch.equal(out_targets, targets)
    assert (out_weights - weights).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(30, 26), (9, 22, 18)])
def test_warp_matches_scipy_map_coordinates(shape):
    # sigma large against the size: many positions fall outside and are reflected
    image, targets, weights = random_batch(shape, n=2, classes=1000, dtype=torch.int64)
    field = elastic_displacement(shape, sigma=8.0, batch=2, generator=gen(9))
    out_image, out_targets, out_weights = warp(image, targets, weights, field)
    outside = 0
    for i in range(2):
        coords = positions(field[i])
        top = np.reshape(shape, (-1,) + (1,) * len(shape)) - 1
        outside += ((coords < 0) | (coords > top)).sum()
        linear = ndi.map_coordinates(weights[i].double().numpy(), coords, order=1, mode="mirror")
        np.testing.assert_allclose(out_weights[i].numpy(), linear, atol=1e-4, rtol=0)
        nearest = ndi.map_coordinates(targets[i].numpy(), coords, order=0, mode="mirror")
        # scipy and torch may break exact half-pixel ties differently; no tie is drawn here
        assert (out_targets[i].numpy() == nearest).mean() == 1.0
        if len(shape) == 3:  # trilinear image
            expected = ndi.map_coordinates(image[i, 0].double().numpy(), coords, order=1,
                                           mode="mirror")
        else:  # bicubic image (Keys cubic convolution, as torch does it)
            expected = bicubic_oracle(image[i, 0].double().numpy(), *coords)
        np.testing.assert_allclose(out_image[i, 0].numpy(), expected, atol=1e-4, rtol=0)
    assert outside > 50  # the reflection was exercised


def test_warp_per_sample_fields():
    shape = (24, 20)
    image, targets, weights = random_batch(shape, n=3)
    fields = elastic_displacement(shape, sigma=5.0, batch=3, generator=gen(2))
    together = warp(image, targets, weights, fields)
    for i in range(3):
        alone = warp(image[i:i + 1], targets[i:i + 1], weights[i:i + 1], fields[i])
        for a, b in zip(together, alone, strict=True):
            assert torch.equal(a[i:i + 1], b)
    assert not torch.equal(together[0][0], together[0][1])  # samples differ


def test_warp_nan_displacement_indexes_in_bounds():
    image, targets, weights = random_batch((16, 16), n=1, classes=4)
    field = torch.zeros(2, 16, 16)
    field[:, 5, 7] = math.nan
    out_targets = warp(image, targets, weights, field)[1]
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[5, 7] = False
    assert torch.equal(out_targets[0][keep], targets[0][keep])
    assert 0 <= out_targets[0, 5, 7] < 4


def test_warp_rejects_bad_inputs():
    image, targets, weights = random_batch((16, 16), n=2)
    field = torch.zeros(2, 16, 16)
    with pytest.raises(ValueError, match=r"\(2, 16, 16\).*\(2, 16, 15\)"):
        warp(image, targets, weights[..., :15], field)
    with pytest.raises(ValueError, match=r"displacement.*\(3, 2, 16, 16\)"):
        warp(image, targets, weights, torch.zeros(3, 2, 16, 16))
    with pytest.raises(ValueError, match="integer"):
        warp(image, targets.float(), weights, field)
    with pytest.raises(ValueError, match=r"\(N, C, Y, X\)"):
        warp(image[0], targets, weights, field)


# ---------------------------------------------------------------------------
# flips and quarter turns
# ---------------------------------------------------------------------------


def dihedral_2d(x):
    """The 8 flips/turns of the last two axes of a numpy array."""
    out = []
    for turns in range(4):
        r = np.rot90(x, turns, axes=(-2, -1))
        out += [r, r[..., ::-1]]
    return out


def linked_batch(shape, n, seed=0):
    """Image channels computed from targets and weights, pixel by pixel."""
    g = gen(seed)
    targets = torch.randint(0, 3, (n, *shape), generator=g, dtype=torch.int64).to(torch.uint8)
    weights = torch.rand((n, *shape), generator=g)
    image = torch.stack([targets + 10 * weights, 2 * weights], dim=1)
    return image, targets, weights


def assert_linked(image, targets, weights):
    assert torch.equal(image[:, 0], targets + 10 * weights)
    assert torch.equal(image[:, 1], 2 * weights)


def test_flip_rot90_2d_square():
    shape, n = (12, 12), 64
    image, targets, weights = linked_batch(shape, n)
    out = flip_rot90(image, targets, weights, generator=gen(1))
    assert [t.dtype for t in out] == [torch.float32, torch.uint8, torch.float32]
    assert out[0].shape == image.shape
    assert_linked(*out)
    seen = set()
    for i in range(n):
        candidates = dihedral_2d(weights[i].numpy())
        match = [k for k, c in enumerate(candidates) if np.array_equal(c, out[2][i].numpy())]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(range(8))  # every flip/turn is drawn


def test_flip_rot90_2d_non_square_keeps_shape():
    shape, n = (10, 14), 48
    image, targets, weights = linked_batch(shape, n)
    out = flip_rot90(image, targets, weights, generator=gen(2))
    assert out[0].shape == image.shape and out[1].shape == targets.shape
    assert_linked(*out)
    seen = set()
    for i in range(n):
        w = weights[i].numpy()
        options = {0: w, 1: w[:, ::-1], 2: w[::-1, :], 3: w[::-1, ::-1]}
        match = [k for k, c in options.items() if np.array_equal(c, out[2][i].numpy())]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {0, 1, 2, 3}


def test_flip_rot90_3d_never_turns_z():
    shape, n = (6, 8, 8), 40
    image, targets, weights = linked_batch(shape, n, seed=3)
    out = flip_rot90(image, targets, weights, generator=gen(4))
    assert_linked(*out)
    z_flipped = 0
    for i in range(n):
        w, got = weights[i].numpy(), out[2][i].numpy()
        # each output slice is a flip/turn of one input slice, the same for every
        # slice, taking the slices in order or in reverse
        found = []
        for zflip, k in itertools.product((False, True), range(8)):
            src = w[::-1] if zflip else w
            if np.array_equal(dihedral_2d(src)[k], got):
                found.append((zflip, k))
        assert len(found) == 1
        z_flipped += found[0][0]
    assert 0 < z_flipped < n


def test_flip_rot90_options():
    image, targets, weights = linked_batch((8, 8), 16)
    same = flip_rot90(image, targets, weights, generator=gen(), flip=False, rot90=False)
    assert all(a is b for a, b in zip(same, (image, targets, weights), strict=True))
    turned = flip_rot90(image, targets, weights, generator=gen(), flip=False)[2]
    flipped = flip_rot90(image, targets, weights, generator=gen(), rot90=False)[2]
    for i in range(16):
        w = weights[i].numpy()
        turns = [np.rot90(w, k) for k in range(4)]
        assert any(np.array_equal(t, turned[i].numpy()) for t in turns)
        flips = [w, w[::-1], w[:, ::-1], w[::-1, ::-1]]
        assert any(np.array_equal(f, flipped[i].numpy()) for f in flips)
    assert not torch.equal(turned, weights) and not torch.equal(flipped, weights)


# ---------------------------------------------------------------------------
# intensity
# ---------------------------------------------------------------------------


def smooth_image(n=6, channels=2, shape=(32, 32)):
    g = gen(7)
    image = torch.randn((n, channels, *shape), generator=g)  # negative values too
    return image


OFF = {"scale": 0.0, "shift": 0.0, "gamma": 0.0, "noise": 0.0}


def test_intensity_all_off_is_identity():
    image = smooth_image()
    assert torch.equal(intensity(image, generator=gen(), **OFF), image)


def test_intensity_scale_only():
    image = smooth_image()
    out = intensity(image, generator=gen(1), **{**OFF, "scale": 0.2})
    ratio = (out / image).flatten(2)
    factor = ratio[..., :1]
    torch.testing.assert_close(ratio, factor.expand_as(ratio), rtol=1e-5, atol=0)
    assert ((factor >= 0.8) & (factor <= 1.2)).all()
    assert factor.std() > 0.05  # per sample and channel, not one factor
    assert (factor - 1).abs().max() > 0.1


def test_intensity_shift_only():
    image = smooth_image()
    out = intensity(image, generator=gen(2), **{**OFF, "shift": 0.1})
    offset = (out - image).flatten(2)
    torch.testing.assert_close(offset, offset[..., :1].expand_as(offset), rtol=0, atol=1e-6)
    assert (offset.abs() <= 0.1 + 1e-6).all()
    assert offset.abs().max() > 0.05


def test_intensity_gamma_only():
    image = smooth_image()
    gamma = 0.3
    out = intensity(image, generator=gen(3), **{**OFF, "gamma": gamma})
    flat_in, flat_out = image.flatten(2).double(), out.flatten(2).double()
    lo, hi = flat_in.amin(-1, keepdim=True), flat_in.amax(-1, keepdim=True)
    torch.testing.assert_close(flat_out.amin(-1, keepdim=True), lo, rtol=0, atol=1e-5)
    torch.testing.assert_close(flat_out.amax(-1, keepdim=True), hi, rtol=0, atol=1e-5)
    u_in, u_out = (flat_in - lo) / (hi - lo), (flat_out - lo) / (hi - lo)
    mid = (u_in > 0.1) & (u_in < 0.9)
    exponent = torch.where(mid, u_out.log() / u_in.log(), torch.nan)
    g = exponent.nanmean(-1, keepdim=True)
    # one exponent per sample and channel, within [exp(-gamma), exp(gamma)]
    assert ((exponent - g).abs().nan_to_num(0) < 1e-3).all()
    assert ((g >= math.exp(-gamma) - 1e-4) & (g <= math.exp(gamma) + 1e-4)).all()
    assert g.max() > 1.1 and g.min() < 0.9  # both brighter and darker mid-tones


def test_intensity_gamma_keeps_constant_channels():
    image = torch.full((2, 1, 8, 8), -3.0)
    assert torch.equal(intensity(image, generator=gen(), **{**OFF, "gamma": 0.5}), image)


def test_intensity_noise_only():
    image = smooth_image(n=8, shape=(64, 64))
    noise = 0.03
    out = intensity(image, generator=gen(4), **{**OFF, "noise": noise})
    residual = (out - image).flatten(2).double()
    std = residual.std(-1)
    assert (std <= noise * 1.05).all()
    assert std.max() > 0.5 * noise and std.std() > 0.1 * noise  # drawn per sample/channel
    assert (residual.mean(-1).abs() <= 4 * std / 64 + 1e-9).all()


def test_intensity_rejects_bad_options():
    image = smooth_image()
    for name, value in (("scale", 1.0), ("scale", -0.1), ("shift", -1.0), ("gamma", math.nan),
                        ("noise", -0.01)):
        with pytest.raises(ValueError, match=name):
            intensity(image, generator=gen(), **{name: value})
    with pytest.raises(ValueError, match="generator"):
        intensity(image, generator=None)


# ---------------------------------------------------------------------------
# Augment
# ---------------------------------------------------------------------------


def test_augment_none_is_identity():
    image, targets, weights = random_batch((16, 16), n=3)
    for augment in (Augment.none(), Augment(elastic=False, flip=False, rot90=False, scale=0,
                                            shift=0, gamma=0, noise=0)):
        out = augment(image, targets, weights, generator=gen())
        for a, b in zip(out, (image, targets, weights), strict=True):
            assert torch.equal(a, b)
    assert Augment.none().config["elastic"] is False


def test_augment_config_and_validation():
    augment = Augment(elastic_sigma=5, scale=0)
    assert augment.config == {
        "elastic": True, "elastic_sigma": 5.0, "elastic_grid": 3, "elastic_probability": 1.0,
        "flip": True, "rot90": True, "scale": 0.0, "shift": 0.1, "gamma": 0.2, "noise": 0.03,
    }
    assert Augment(**augment.config).config == augment.config
    bad = {"elastic_sigma": -1.0, "elastic_grid": 1, "elastic_probability": 1.5,
           "scale": 1.0, "shift": -0.1, "gamma": -0.2, "noise": math.inf, "flip": "yes"}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            Augment(**{name: value})


def test_augment_keeps_alignment_end_to_end():
    shape = (128, 128)
    image, targets, weights, _ = nuclei_batch(shape)
    n = 4
    batch = (image.expand(n, -1, -1, -1), targets.expand(n, -1, -1),
             weights.expand(n, -1, -1))
    augment = Augment(scale=0, shift=0, gamma=0, noise=0)
    out_image, out_targets, out_weights = augment(*batch, generator=gen(12))
    agree = ((out_image[:, 0] > 0.5) == (out_targets == 1)).double().mean(dim=(1, 2))
    assert (agree >= 0.98).all()
    assert not torch.equal(out_targets[0], out_targets[1])  # per-sample transforms
    torch.testing.assert_close(out_weights, torch.ones_like(out_weights), rtol=0, atol=1e-5)


def test_augment_elastic_probability():
    image, targets, weights = random_batch((20, 20), n=16)
    only_elastic = {"flip": False, "rot90": False, **OFF}
    out = Augment(elastic_probability=0.0, **only_elastic)(image, targets, weights,
                                                          generator=gen())
    assert all(torch.equal(a, b) for a, b in zip(out, (image, targets, weights), strict=True))
    out = Augment(elastic_probability=0.5, **only_elastic)(image, targets, weights,
                                                          generator=gen(1))
    unchanged = [torch.equal(out[0][i], image[i]) for i in range(16)]
    for i, same in enumerate(unchanged):  # a sample is kept or deformed as a whole
        assert same == torch.equal(out[2][i], weights[i])
    assert 3 <= sum(unchanged) <= 13


def test_augment_is_deterministic():
    image, targets, weights = random_batch((24, 24), n=3)
    augment = Augment()
    first = augment(image, targets, weights, generator=gen(5))
    again = augment(image, targets, weights, generator=gen(5))
    other = augment(image, targets, weights, generator=gen(6))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_augment_3d():
    shape = (24, 64, 64)
    image, targets, weights, _ = nuclei_batch(shape)
    augment = Augment(scale=0, shift=0, gamma=0, noise=0)
    out_image, out_targets, _ = augment(image, targets, weights, generator=gen(2))
    assert out_image.shape == image.shape and out_targets.dtype == torch.uint8
    agree = ((out_image[0, 0] > 0.5) == (out_targets[0] == 1)).double().mean()
    assert agree >= 0.98


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(128, 128), (24, 64, 64)])
def test_augment_same_on_cuda_and_cpu(shape):
    image, targets, weights, labels = nuclei_batch(shape)
    image = image.expand(3, 2, *shape).contiguous()  # two channels, three samples
    targets = torch.from_numpy(labels.astype(np.int64))[None].expand(3, *shape).contiguous()
    weights = weights.expand(3, *shape).contiguous()
    augment = Augment(elastic_probability=0.7)
    cpu = augment(image, targets, weights, generator=gen(21))
    cuda = augment(image.cuda(), targets.cuda(), weights.cuda(), generator=gen(21))
    assert all(t.device.type == "cuda" for t in cuda)
    assert (cuda[0].cpu() - cpu[0]).abs().max() < 1e-4
    assert torch.equal(cuda[1].cpu(), cpu[1])
    assert (cuda[2].cpu() - cpu[2]).abs().max() < 1e-4
