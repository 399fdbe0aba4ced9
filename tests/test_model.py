"""The U-Net: shapes against the paper and a forward pass, receptive field, init, config."""

import io
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from unetpipe.nn.model import (
    UNet,
    anisotropic_pooling,
    border,
    center_crop,
    count_parameters,
    pooling_factor,
    receptive_field,
    valid_input_shape,
    valid_output_shape,
)

ANISO = [(1, 2, 2), (2, 2, 2)]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(**kwargs):
    torch.manual_seed(0)
    return UNet(features=kwargs.pop("features", 2), **kwargs).eval()


def shape_kwargs(model):
    c = model.config
    return {"ndim": c["ndim"], "depth": c["depth"], "pooling": c["pooling"],
            "padding": c["padding"]}


def forward_shape(model, spatial, batch=1):
    x = torch.rand(batch, model.config["in_channels"], *spatial)
    with torch.no_grad():
        return tuple(model(x).shape)


# -- shapes ------------------------------------------------------------------


def test_paper_valid_shapes_572_to_388():
    assert valid_output_shape((572, 572), ndim=2, depth=4, padding="valid") == (388, 388)
    assert border(ndim=2, depth=4, padding="valid") == (92, 92)
    model = tiny(depth=4, padding="valid")
    assert forward_shape(model, (572, 572)) == (1, 2, 388, 388)


def test_paper_intermediate_sizes():
    # Fig. 1 of the paper: the sizes along the contracting and expanding path
    model = tiny(depth=4, padding="valid")
    sizes = []
    for module in [*model.down, model.bottleneck, *model.up_blocks]:
        module.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    forward_shape(model, (572, 572))
    assert sizes == [568, 280, 136, 64, 28, 52, 100, 196, 388]


def some_inputs(ndim, depth, pooling, padding):
    """The smallest valid input and a couple of larger, non-cubic ones."""
    smallest = valid_input_shape((1,) * ndim, ndim=ndim, depth=depth, pooling=pooling,
                                 padding=padding)
    step = pooling_factor(ndim=ndim, depth=depth, pooling=pooling)
    return [smallest,
            tuple(s + k * p for s, p, k in zip(smallest, step, (1, 2, 3)[:ndim], strict=True))]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_forward_shape_2d_matches_helper(depth, padding):
    model = tiny(depth=depth, padding=padding, out_channels=3)
    for spatial in some_inputs(2, depth, None, padding):
        expected = valid_output_shape(spatial, ndim=2, depth=depth, padding=padding)
        assert forward_shape(model, spatial, batch=2) == (2, 3, *expected)
        if padding == "same":
            assert expected == spatial
        else:
            b = border(ndim=2, depth=depth, padding=padding)
            assert expected == tuple(s - 2 * e for s, e in zip(spatial, b, strict=True))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_forward_shape_3d_matches_helper(depth, padding):
    # z pooled only from the second level on, to keep valid-mode stacks small
    pooling = [(1, 2, 2)] + [(2, 2, 2)] * (depth - 1) if depth >= 3 else None
    model = tiny(ndim=3, depth=depth, padding=padding, pooling=pooling)
    for spatial in some_inputs(3, depth, pooling, padding)[: 1 if depth >= 3 else 2]:
        expected = valid_output_shape(spatial, ndim=3, depth=depth, pooling=pooling,
                                      padding=padding)
        assert forward_shape(model, spatial) == (1, 2, *expected)


def true_network_output(model, spatial):
    """Oracle: trace shapes through the real modules on the meta device.

    A shape is valid when no pooling has a remainder, every crop is exact and
    every feature map is non-empty; returns the output shape or None.
    """
    remainders = []

    def check(module, args):
        size = args[0].shape[2:]
        remainders.append(any(s % k for s, k in zip(size, module.kernel_size, strict=True)))

    handles = [pool.register_forward_pre_hook(check) for pool in model.pools]
    try:
        x = torch.empty(1, 1, *spatial, device="meta")
        out = model.to("meta")._forward_unchecked(x)
    except (RuntimeError, ValueError):
        return None
    finally:
        for handle in handles:
            handle.remove()
    if any(remainders) or min(out.shape[2:]) < 1:
        return None
    return tuple(out.shape[2:])


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(("ndim", "depth", "pooling"), [
    (2, 2, None), (2, 3, [(2, 1), (1, 2), (2, 2)]), (3, 2, ANISO),
])
def test_valid_output_shape_against_network_trace(ndim, depth, pooling, padding):
    model = UNet(ndim=ndim, depth=depth, pooling=pooling, padding=padding, features=1)
    # one axis varies, the others are held at a valid size
    base = valid_input_shape((1,) * ndim, ndim=ndim, depth=depth, pooling=pooling,
                             padding=padding)
    checked = 0
    for size in range(1, 90):
        for axis in range(ndim):
            spatial = tuple(size if a == axis else base[a] for a in range(ndim))
            truth = true_network_output(model, spatial)
            if truth is None:
                with pytest.raises(ValueError, match="not valid"):
                    model.valid_output_shape(spatial)
            else:
                assert model.valid_output_shape(spatial) == truth
                checked += 1
    assert checked >= 10


def test_invalid_shapes_raise_with_nearest_sizes():
    with pytest.raises(ValueError, match=r"\(570, 572\).*570 is not valid.*556 and 572"):
        valid_output_shape((570, 572), ndim=2, depth=4, padding="valid")
    with pytest.raises(ValueError, match=r"100 is not valid.*smallest valid size is 188"):
        valid_output_shape((572, 100), ndim=2, depth=4, padding="valid")
    with pytest.raises(ValueError, match=r"30 is not valid.*28 and 32"):
        valid_output_shape((30, 32), ndim=2, depth=2)
    with pytest.raises(ValueError, match=r"axis 0: 5 is not valid, nearest valid sizes 4 and 6$"):
        valid_output_shape((5, 8, 8), ndim=3, depth=2, pooling=ANISO)
    assert valid_output_shape((2, 4, 4), ndim=3, depth=2, pooling=ANISO) == (2, 4, 4)
    with pytest.raises(ValueError, match="input_shape must be 2 integers"):
        valid_output_shape((32, 32, 32), ndim=2, depth=2)


def test_forward_rejects_bad_inputs():
    model = tiny(depth=2, in_channels=2)
    with pytest.raises(ValueError, match=r"\(1, 2, 30, 32\).*30 is not valid.*28 and 32"):
        model(torch.zeros(1, 2, 30, 32))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 2, .*got \(1, 1, 32, 32\)"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got \(2, 32, 32\)"):
        model(torch.zeros(2, 32, 32))
    valid = tiny(depth=1, padding="valid")
    with pytest.raises(ValueError, match="16 is not valid, the smallest valid size is 18"):
        valid(torch.zeros(1, 1, 16, 18))
    assert forward_shape(valid, (18, 20)) == (1, 2, 2, 4)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(("ndim", "depth", "pooling"), [
    (2, 1, None), (2, 4, None), (3, 2, ANISO), (3, 3, [(1, 2, 2), (1, 2, 2), (2, 2, 2)]),
])
def test_valid_input_shape_is_minimal(ndim, depth, pooling, padding):
    kwargs = {"ndim": ndim, "depth": depth, "pooling": pooling, "padding": padding}
    rng = np.random.default_rng(ndim * 10 + depth)
    for _ in range(20):
        wanted = tuple(int(v) for v in rng.integers(1, 300, size=ndim))
        got = valid_input_shape(wanted, **kwargs)
        assert all(g >= w for g, w in zip(got, wanted, strict=True))
        valid_output_shape(got, **kwargs)  # does not raise
        for axis in range(ndim):
            # every size between the request and the answer is invalid on that axis
            for smaller in range(wanted[axis], got[axis]):
                shape = tuple(smaller if a == axis else got[a] for a in range(ndim))
                with pytest.raises(ValueError):
                    valid_output_shape(shape, **kwargs)


def test_valid_input_shapes_run():
    for kwargs in [{"depth": 3, "padding": "valid"}, {"depth": 2}]:
        model = tiny(**kwargs)
        spatial = model.valid_input_shape((41, 50))
        assert forward_shape(model, spatial)[2:] == model.valid_output_shape(spatial)
    assert valid_input_shape((500, 100), ndim=2, depth=4, padding="valid") == (508, 188)
    assert valid_input_shape((33, 1), ndim=2, depth=3) == (40, 8)


def test_pooling_factor_and_border():
    assert pooling_factor(ndim=2, depth=4) == (16, 16)
    assert pooling_factor(ndim=3, depth=4, pooling=[(1, 2, 2)] + [(2, 2, 2)] * 3) == (8, 16, 16)
    assert border(ndim=3, depth=2, pooling=ANISO) == (0, 0, 0)
    # lost per axis: z 8 + 1 * (8 + 2 * 4) = 24, y and x 8 + 2 * (8 + 2 * 4) = 40
    assert border(ndim=3, depth=2, pooling=ANISO, padding="valid") == (12, 20, 20)
    model = tiny(ndim=3, depth=2, pooling=ANISO, padding="valid")
    for spatial in [(26, 44, 44), (30, 48, 52)]:
        out = model.valid_output_shape(spatial)
        assert tuple((s - o) // 2 for s, o in zip(spatial, out, strict=True)) == model.border()


# -- receptive field -----------------------------------------------------------


def field_extents(model, phases):
    """Per axis, the largest extent of the input pixels reaching one output pixel.

    Max pooling sends the gradient to one pixel per window; average pooling
    with the same windows reaches every pixel that can influence the output.
    With positive weights, zero biases and a positive input every ReLU passes
    and no gradient cancels, so the non-zero input gradient is exactly the
    field.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d | nn.MaxPool3d):
                avg = nn.AvgPool2d if isinstance(child, nn.MaxPool2d) else nn.AvgPool3d
                setattr(parent, name, avg(child.kernel_size, child.stride))
    model = model.double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    rf, step = model.receptive_field(), model.pooling_factor()
    # "same" mode pads with zeros: keep the output pixels a field away from the border
    margin = 1 if model.config["padding"] == "valid" else 2
    spatial = model.valid_input_shape([margin * (r + p) for r, p in zip(rf, step, strict=True)])
    out_shape = model.valid_output_shape(spatial)
    x = torch.rand(len(phases), 1, *spatial, dtype=torch.float64, generator=torch.Generator()
                   .manual_seed(0)) + 0.5
    x.requires_grad_(True)
    y = model(x)
    start = [o // 2 - (o // 2) % p for o, p in zip(out_shape, step, strict=True)]
    picked = [y[(n, 0, *[s + k for s, k in zip(start, phase, strict=True)])]
              for n, phase in enumerate(phases)]
    torch.stack(picked).sum().backward()
    extents = np.zeros(len(step), int)
    for n in range(len(phases)):
        support = torch.nonzero(x.grad[n, 0]).numpy()
        extents = np.maximum(extents, support.max(0) - support.min(0) + 1)
    return tuple(int(e) for e in extents)


def all_phases(model):
    return list(itertools.product(*[range(p) for p in model.pooling_factor()]))


@pytest.mark.parametrize(("depth", "padding"), [
    (1, "same"), (1, "valid"), (2, "same"), (2, "valid"), (3, "valid"),
])
def test_receptive_field_empirical_2d(depth, padding):
    model = tiny(depth=depth, padding=padding)
    expected = {1: 18, 2: 44, 3: 100}[depth]
    assert model.receptive_field() == (expected, expected)
    assert field_extents(model, all_phases(model)) == (expected, expected)


def test_receptive_field_empirical_2d_depth_4():
    # 256 alignments are too many here; the field is a box, so its extent on
    # an axis depends only on the alignment along that axis: take (k, k).
    model = tiny(depth=4, padding="valid")
    assert model.receptive_field() == (204, 204)
    assert field_extents(model, [(k, k) for k in range(16)]) == (204, 204)


def test_receptive_field_empirical_3d_anisotropic():
    model = tiny(ndim=3, depth=2, pooling=ANISO, padding="valid", features=1)
    assert model.receptive_field() == (26, 44, 44)
    assert field_extents(model, all_phases(model)) == (26, 44, 44)


def test_receptive_field_values():
    # the paper's network: the textbook recursion's 200 misses 4 pixels (see Notes)
    assert receptive_field(ndim=2, depth=4) == (204, 204)
    assert receptive_field(ndim=2, depth=1) == (18, 18)
    # y is never pooled: five double convolutions, 1 + 5 * 4
    assert receptive_field(ndim=3, depth=2, pooling=[(2, 1, 2), (1, 1, 2)]) == (34, 21, 44)
    assert receptive_field(ndim=3, depth=2, pooling=[(1, 1, 2), (2, 1, 2)]) == (26, 21, 44)


# -- initialisation --------------------------------------------------------------


def fan_in(module):
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return module.in_channels  # kernel = stride: one tap per input channel
    return module.weight[0].numel()


@pytest.mark.parametrize("ndim", [2, 3])
def test_he_initialisation(ndim):
    torch.manual_seed(1)
    model = UNet(ndim=ndim, depth=2, features=64)
    checked = 0
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            w = module.weight.detach().double()
            assert float(module.bias.detach().abs().max()) == 0.0
            if w.numel() < 2000:
                continue  # too few values for a 10% estimate of the std
            target = math.sqrt(2.0 / fan_in(module))
            assert abs(float(w.std()) / target - 1) < 0.1, module
            assert abs(float(w.mean())) < 0.05 * target, module
            checked += 1
    assert checked >= 8


def test_norm_layers_initialised_and_convs_without_bias():
    model = UNet(depth=2, features=4, norm="batch")
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_()
    model.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 2 * 5
    for m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert all(m.bias is None for m in convs[:-1])  # followed by a norm
    assert convs[-1].bias is not None  # the 1x1 head
    assert all(m.bias is not None for m in model.ups)


def test_count_parameters_by_hand():
    # depth 1, features 2, 1 -> 2 channels: weights + biases of each layer
    expected = ((1 * 2 * 9 + 2) + (2 * 2 * 9 + 2)  # first level
                + (2 * 4 * 9 + 4) + (4 * 4 * 9 + 4)  # bottleneck
                + (4 * 2 * 4 + 2)  # up-convolution 2x2
                + (4 * 2 * 9 + 2) + (2 * 2 * 9 + 2)  # after the concatenation
                + (2 * 2 + 2))  # 1x1 head
    assert count_parameters(UNet(depth=1, features=2)) == expected == 434
    model = UNet(depth=1, features=2)
    model.head.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == expected - 6


# -- config and checkpoints ----------------------------------------------------------


CONFIGS = [
    {},
    {"ndim": 3, "depth": 2, "pooling": ((1, 2, 2), (2, 2, 2)), "padding": "valid",
     "norm": "group", "in_channels": 2, "out_channels": 3, "features": 3, "dropout": 0.25},
    {"depth": 1, "norm": "batch", "pooling": [np.array([2, 1])], "features": np.int64(2)},
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_config_round_trip(kwargs):
    model = UNet(**kwargs)
    config = model.config
    assert set(config) == {"ndim", "in_channels", "out_channels", "depth", "features",
                           "padding", "norm", "dropout", "pooling"}
    assert len(config["pooling"]) == config["depth"]
    for key, value in kwargs.items():
        if key != "pooling":
            assert config[key] == value
    buffer = io.BytesIO()
    torch.save({"config": config, "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["config"] == config
    rebuilt = UNet(**loaded["config"])
    assert rebuilt.config == config
    assert str(rebuilt) == str(model)
    rebuilt.load_state_dict(loaded["state_dict"])
    model.eval()
    rebuilt.eval()
    spatial = model.valid_input_shape((8,) * config["ndim"])
    x = torch.rand(2, config["in_channels"], *spatial)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_config_is_plain_and_a_copy():
    model = UNet(ndim=3, depth=2)
    config = model.config
    assert config["pooling"] == [[2, 2, 2], [2, 2, 2]]
    assert all(type(v) in (int, float, str, list) for v in config.values())
    config["pooling"][0][0] = 1
    config["depth"] = 9
    assert model.config["pooling"][0] == [2, 2, 2] and model.config["depth"] == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ndim": 4}, "ndim"), ({"depth": -1}, "depth"), ({"features": 0}, "features"),
    ({"padding": "reflect"}, "padding"), ({"norm": "layer"}, "norm"),
    ({"dropout": 1.0}, "dropout"), ({"depth": 2, "pooling": [(2, 2)]}, "one entry per level"),
    ({"depth": 1, "pooling": [(2, 2, 2)]}, "2 factors"), ({"depth": 1, "pooling": [(3, 2)]},
                                                          "1 or 2"),
    ({"in_channels": 1.5}, "in_channels"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        UNet(2)


# -- behaviour ----------------------------------------------------------------------------


def test_dropout_train_and_eval():
    torch.manual_seed(0)
    plain = UNet(depth=2, features=4)
    dropped = UNet(depth=2, features=4, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 16, 16)
    dropped.train()
    with torch.no_grad():
        assert not torch.allclose(dropped(x), dropped(x))
    dropped.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(dropped(x), plain(x))
    plain.train()  # no dropout: train mode is deterministic without norm layers
    with torch.no_grad():
        assert torch.equal(plain(x), plain(x))


def test_dropout_acts_on_bottleneck_output():
    model = UNet(depth=2, features=4, dropout=0.5).train()
    seen = {}
    model.bottleneck.register_forward_hook(lambda m, i, o: seen.update(bottleneck=o.clone()))
    model.dropout.register_forward_hook(lambda m, i, o: seen.update(dropped=o.clone()))
    with torch.no_grad():
        model(torch.rand(1, 1, 16, 16))
    kept = seen["dropped"] != 0
    assert 0.2 < float(kept.float().mean()) < 0.8
    assert torch.allclose(seen["dropped"][kept], 2 * seen["bottleneck"][kept])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_norm_variants(norm, ndim):
    model = tiny(ndim=ndim, depth=2, features=6, norm=norm).train()
    spatial = (8,) * ndim
    out = model(torch.rand(2, 1, *spatial))
    assert out.shape == (2, 2, *spatial) and torch.isfinite(out).all()
    out.sum().backward()
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm | nn.modules.batchnorm._NormBase)]
    assert len(norms) == 2 * 5


def test_group_norm_group_counts():
    model = UNet(depth=2, features=6, norm="group")
    got = {(m.num_channels, m.num_groups) for m in model.modules() if isinstance(m, nn.GroupNorm)}
    # the largest number of groups <= 8 that divides the channels
    assert got == {(6, 6), (12, 6), (24, 8)}


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_channels_last_matches_contiguous(padding):
    model = tiny(depth=2, features=4, norm="batch", padding=padding, in_channels=3)
    spatial = model.valid_input_shape((40, 44))
    x = torch.rand(2, 3, *spatial)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_autocast_bf16():
    model = tiny(depth=2, features=4)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    assert torch.allclose(got.float(), expected, atol=0.05 * float(expected.abs().max()))


# -- helpers ------------------------------------------------------------------------------


def test_anisotropic_pooling():
    assert anisotropic_pooling((1.0, 1.0, 1.0), depth=3) == [(2, 2, 2)] * 3
    assert anisotropic_pooling((0.3, 0.3), depth=2) == [(2, 2), (2, 2)]
    assert anisotropic_pooling((2.0, 0.5, 0.5), depth=4) == [
        (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    # 1.9 < 2 * 1: close enough to isotropic to pool together from the start
    assert anisotropic_pooling((1.9, 1.0, 1.0), depth=2) == [(2, 2, 2), (2, 2, 2)]
    # current spacings: (5, 1, 1) -> (5, 2, 2) -> (5, 4, 4) -> (10, 8, 8)
    assert anisotropic_pooling((5, 1, 1), depth=3) == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert anisotropic_pooling((2.0, 0.5, 0.5), depth=0) == []
    pooling = anisotropic_pooling((2.0, 0.5, 0.5), depth=3)
    assert UNet(ndim=3, depth=3, pooling=pooling).config["pooling"] == [list(p) for p in pooling]
    for bad in [(0.0, 1.0, 1.0), (1.0,), (1.0, -1.0)]:
        with pytest.raises(ValueError, match="spacing"):
            anisotropic_pooling(bad, depth=2)


def test_center_crop_numpy_and_torch():
    array = np.arange(2 * 7 * 6).reshape(2, 7, 6)
    got = center_crop(array, (3, 2))
    np.testing.assert_array_equal(got, array[:, 2:5, 2:4])
    tensor = torch.from_numpy(array)
    assert torch.equal(center_crop(tensor, (7, 6)), tensor)
    assert torch.equal(center_crop(tensor, (4,)), tensor[..., 1:5])
    assert torch.equal(center_crop(tensor, (2, 3, 4)), tensor[:, 2:5, 1:5])
    with pytest.raises(ValueError, match=r"\(2, 7, 6\) to \(4, 2\)"):
        center_crop(array, (4, 2))  # odd difference: no centre
    with pytest.raises(ValueError, match="even difference"):
        center_crop(array, (9, 2))
    with pytest.raises(ValueError):
        center_crop(array, (1, 2, 7, 6))
