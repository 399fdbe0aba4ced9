"""The U-Net of Ronneberger et al. (2015), 2D and 3D, and its shape arithmetic.

The network follows the paper: a contracting path of double 3x3 (3x3x3)
convolutions with ReLUs and max pooling, a bottleneck with dropout on its
output, and an expanding path of up-convolutions (transposed convolutions
with kernel = stride = the pooling factor) that halve the features, a
concatenation with the skip connection from the contracting path, and a
double convolution; a final 1x1 convolution gives the class logits.

Two paddings:

``"same"``
    Zero-padded convolutions: the output has the input's spatial shape, which
    must be divisible by the total pooling factor on every axis.
``"valid"``
    As in the paper: unpadded convolutions, each losing 2 pixels per axis;
    the skip connections are centre-cropped to the expanding path's shape. The
    output is smaller than the input by ``2 * border`` on each axis, and only
    inputs for which every pooling divides evenly are accepted.

Anisotropic stacks (coarse z) pool only some axes at some levels: ``pooling``
gives each level's factor per axis, 1 or 2 (see :func:`anisotropic_pooling`).

The shape helpers (:func:`pooling_factor`, :func:`receptive_field`,
:func:`valid_output_shape`, :func:`valid_input_shape`, :func:`border`) are
pure functions of the constructor arguments, so that prediction code can plan
tiles from a checkpoint's ``config`` without building the network; each is
also a method of :class:`UNet` with the model's own settings.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "NORMS",
    "PADDINGS",
    "UNet",
    "anisotropic_pooling",
    "border",
    "center_crop",
    "count_parameters",
    "pooling_factor",
    "receptive_field",
    "valid_input_shape",
    "valid_output_shape",
]

PADDINGS = ("same", "valid")
NORMS = ("none", "batch", "group", "instance")
# Pixels lost per axis by one double 3x3 convolution without padding.
_VALID_LOSS = 4


# --------------------------------------------------------------------------
# Argument checks shared by the helpers and the model


def _check_int(name: str, value, *, minimum: int) -> int:
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or as_int != value or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def _check_ndim(ndim) -> int:
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return int(ndim)


def _check_padding(padding) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def _normalise_pooling(pooling, *, ndim: int, depth: int) -> list[tuple[int, ...]]:
    """Per-level pooling factors as a list of ``depth`` tuples of ``ndim`` ints in {1, 2}."""
    ndim = _check_ndim(ndim)
    depth = _check_int("depth", depth, minimum=0)
    if pooling is None:
        return [(2,) * ndim for _ in range(depth)]
    try:
        entries = None if isinstance(pooling, str | bytes) else list(pooling)
    except TypeError:
        entries = None
    if entries is None:
        raise ValueError(f"pooling must be a list of {depth} per-level factors, got {pooling!r}")
    if len(entries) != depth:
        raise ValueError(
            f"pooling must have one entry per level (depth={depth}), got {len(entries)}: "
            f"{pooling!r}"
        )
    levels = []
    for level, factors in enumerate(entries):
        try:
            # tuples, lists (from a loaded config) and 1D arrays are all fine
            values = None if isinstance(factors, str | bytes) else tuple(factors)
        except TypeError:
            values = None
        if values is None or len(values) != ndim:
            raise ValueError(
                f"pooling[{level}] must be {ndim} factors (one per axis), got {factors!r}"
            )
        if any(isinstance(f, bool) or f not in (1, 2) for f in values):
            raise ValueError(f"pooling factors must be 1 or 2, got pooling[{level}]={factors!r}")
        levels.append(tuple(int(f) for f in values))
    return levels


def _check_shape(name: str, shape, ndim: int) -> tuple[int, ...]:
    try:
        shape = tuple(shape)
        values = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {ndim} integers, got {shape!r}") from None
    if len(values) != ndim or any(v != s for v, s in zip(values, shape, strict=True)):
        raise ValueError(f"{name} must be {ndim} integers (one per spatial axis), got {shape!r}")
    return values


# --------------------------------------------------------------------------
# Shape arithmetic, one axis at a time (the axes are independent)


def _axis_output(size: int, factors: Sequence[int], padding: str) -> int | None:
    """Output size along one axis, or None when ``size`` is not a valid input size."""
    if size < 1:
        return None
    if padding == "same":
        return size if size % math.prod(factors) == 0 else None
    for p in factors:
        size -= _VALID_LOSS
        if size < 1 or size % p:
            return None
        size //= p
    size -= _VALID_LOSS
    if size < 1:
        return None
    # The skip connections are then larger than the up-convolutions' outputs by
    # p * (what the levels below lose), an even number: the crops are centred.
    for p in reversed(factors):
        size = size * p - _VALID_LOSS
        if size < 1:
            return None
    return size


def _axis_smallest(factors: Sequence[int], padding: str) -> int:
    """The smallest valid input size along one axis."""
    if padding == "same":
        return math.prod(factors)
    size = 1
    while _axis_output(size, factors, padding) is None:
        size += 1
    return size


def _axis_valid_at_least(size: int, factors: Sequence[int], padding: str) -> int:
    """The smallest valid input size >= ``size`` along one axis.

    Valid sizes are ``smallest + k * P`` (k >= 0, P the axis's pooling factor):
    the divisibility checks fix the size modulo P, and a larger size never
    makes an intermediate size smaller.
    """
    smallest = _axis_smallest(factors, padding)
    step = math.prod(factors)
    if size <= smallest:
        return smallest
    return smallest + -(-(size - smallest) // step) * step


def _axis_factors(levels: list[tuple[int, ...]], axis: int) -> list[int]:
    return [factors[axis] for factors in levels]


# --------------------------------------------------------------------------
# Public shape helpers


def pooling_factor(*, ndim: int, depth: int, pooling=None) -> tuple[int, ...]:
    """Total downsampling factor per axis: the product of the levels' pooling factors.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial axes.
    depth : int
        Number of pooling levels.
    pooling : list of tuple of int, optional
        Per-level factors (see :class:`UNet`); None = 2 on every axis.

    Returns
    -------
    factor : tuple of int, length ``ndim``

    Examples
    --------
    >>> pooling_factor(ndim=3, depth=3, pooling=[(1, 2, 2), (2, 2, 2), (2, 2, 2)])
    (4, 8, 8)
    """
    levels = _normalise_pooling(pooling, ndim=ndim, depth=depth)
    return tuple(math.prod(_axis_factors(levels, a)) for a in range(ndim))


def _axis_field(factors: Sequence[int], position: int) -> int:
    """Extent of the input positions that can influence output ``position`` along one axis."""
    lo = hi = position
    for p in factors:  # expanding path, finest level first, walked backwards
        lo, hi = lo - _VALID_LOSS // 2, hi + _VALID_LOSS // 2
        lo, hi = lo // p, hi // p  # the up-convolution: fine pixel u comes from u // p
    lo, hi = lo - _VALID_LOSS // 2, hi + _VALID_LOSS // 2  # bottleneck
    for p in reversed(factors):  # contracting path, deepest level first
        lo, hi = lo * p, hi * p + p - 1  # coarse pixel c pools fine c * p ... c * p + p - 1
        lo, hi = lo - _VALID_LOSS // 2, hi + _VALID_LOSS // 2
    return hi - lo + 1


def receptive_field(*, ndim: int, depth: int, pooling=None) -> tuple[int, ...]:
    """Extent, in input pixels per axis, of the inputs that can influence one output pixel.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial axes.
    depth : int
        Number of pooling levels.
    pooling : list of tuple of int, optional
        Per-level factors; None = 2 on every axis.

    Returns
    -------
    extent : tuple of int, length ``ndim``
        Per axis, the largest extent, over output pixels, of the union of the
        input pixels that can influence one output pixel. The same for both
        paddings (away from the image border in ``"same"`` mode).

    Notes
    -----
    Computed exactly, by following the interval of positions that can
    influence output pixel x backwards through the network: a 3-wide
    convolution widens it by 1 on each side; an up-convolution by p (kernel =
    stride) maps fine positions [a, b] to coarse positions [a // p, b // p];
    a pooling by p maps coarse [a, b] to fine [a p, b p + p - 1]. The skip
    connections see a subset of what the deeper path sees. The extent depends
    on how x is aligned with the pooling grid, so this is the largest over
    the P alignments (P the axis's pooling factor); every period of P output
    pixels has a pixel that reaches it.

    The textbook recursion (``r += (k - 1) j`` per convolution, ``r += (p - 1)
    j; j *= p`` per pooling, ``j //= p`` per up-convolution) undercounts from
    three up-convolutions on: the rounding of a window onto the coarse grid
    at each up-convolution adds up for the worst alignments. It gives 96 and
    200 for 2D depths 3 and 4, where the network has 100 and 204.

    Examples
    --------
    >>> receptive_field(ndim=2, depth=4)
    (204, 204)
    >>> receptive_field(ndim=3, depth=2, pooling=[(1, 2, 2), (2, 2, 2)])
    (26, 44, 44)
    """
    levels = _normalise_pooling(pooling, ndim=ndim, depth=depth)
    extents = []
    for axis in range(ndim):
        factors = _axis_factors(levels, axis)
        extents.append(max(_axis_field(factors, x) for x in range(math.prod(factors))))
    return tuple(extents)


def _describe_valid_sizes(size: int, factors: Sequence[int], padding: str) -> str:
    smallest = _axis_smallest(factors, padding)
    step = math.prod(factors)
    if size < smallest:
        return f"the smallest valid size is {smallest}"
    below = smallest + (size - smallest) // step * step
    return f"nearest valid sizes {below} and {below + step}"


def valid_output_shape(input_shape, *, ndim: int, depth: int, pooling=None,
                       padding: str = "same") -> tuple[int, ...]:
    """Spatial output shape of the U-Net for a spatial input shape.

    Parameters
    ----------
    input_shape : sequence of int, length ``ndim``
        Spatial input shape (no batch or channel axes).
    ndim, depth, pooling, padding
        As for :class:`UNet`.

    Returns
    -------
    output_shape : tuple of int, length ``ndim``
        Equal to ``input_shape`` for ``"same"``; ``input_shape - 2 * border``
        for ``"valid"``.

    Raises
    ------
    ValueError
        If ``input_shape`` is not valid: for ``"same"``, an axis not divisible
        by the pooling factor; for ``"valid"``, a feature map that would be
        pooled with a remainder or shrink to nothing. The message names the
        shape and, per bad axis, the nearest valid sizes.

    Notes
    -----
    For ``"valid"``, per axis and level: ``s -= 4``, ``s`` must be divisible
    by the level's factor p, ``s //= p``; at the bottleneck ``s -= 4``; per
    level going up ``s = s * p - 4``. Every size along the way must be >= 1.

    Examples
    --------
    >>> valid_output_shape((572, 572), ndim=2, depth=4, padding="valid")
    (388, 388)
    """
    ndim = _check_ndim(ndim)
    padding = _check_padding(padding)
    levels = _normalise_pooling(pooling, ndim=ndim, depth=depth)
    shape = _check_shape("input_shape", input_shape, ndim)
    out, problems = [], []
    for axis, size in enumerate(shape):
        factors = _axis_factors(levels, axis)
        got = _axis_output(size, factors, padding)
        if got is None:
            problems.append(
                f"axis {axis}: {size} is not valid, {_describe_valid_sizes(size, factors, padding)}"
            )
        out.append(got)
    if problems:
        raise ValueError(
            f"spatial shape {shape} is not valid for a U-Net with padding={padding!r}, "
            f"depth={depth}, pooling factor {pooling_factor(ndim=ndim, depth=depth, pooling=levels)}"
            f": " + "; ".join(problems)
        )
    return tuple(out)


def valid_input_shape(min_shape, *, ndim: int, depth: int, pooling=None,
                      padding: str = "same") -> tuple[int, ...]:
    """The smallest valid spatial input shape that is at least ``min_shape`` on every axis.

    Parameters
    ----------
    min_shape : sequence of int, length ``ndim``
        Lower bound on the input shape (values < 1 mean no bound).
    ndim, depth, pooling, padding
        As for :class:`UNet`.

    Returns
    -------
    shape : tuple of int, length ``ndim``
        For ``"same"``, ``min_shape`` rounded up to a multiple of the pooling
        factor; for ``"valid"``, the smallest input >= ``min_shape`` that
        passes the divisibility checks and gives an output of at least 1.

    Examples
    --------
    >>> valid_input_shape((500, 100), ndim=2, depth=4, padding="valid")
    (508, 188)
    """
    ndim = _check_ndim(ndim)
    padding = _check_padding(padding)
    levels = _normalise_pooling(pooling, ndim=ndim, depth=depth)
    shape = _check_shape("min_shape", min_shape, ndim)
    return tuple(
        _axis_valid_at_least(size, _axis_factors(levels, axis), padding)
        for axis, size in enumerate(shape)
    )


def border(*, ndim: int, depth: int, pooling=None, padding: str = "same") -> tuple[int, ...]:
    """Pixels lost on each side per axis: ``(input - output) / 2``.

    Parameters
    ----------
    ndim, depth, pooling, padding
        As for :class:`UNet`.

    Returns
    -------
    border : tuple of int, length ``ndim``
        0 for ``"same"``. For ``"valid"`` it is the same for every valid input
        (each level loses ``8 + p * (loss of the levels below)``).

    Examples
    --------
    >>> border(ndim=2, depth=4, padding="valid")
    (92, 92)
    """
    ndim = _check_ndim(ndim)
    padding = _check_padding(padding)
    levels = _normalise_pooling(pooling, ndim=ndim, depth=depth)
    if padding == "same":
        return (0,) * ndim
    out = []
    for axis in range(ndim):
        loss = _VALID_LOSS
        for p in reversed(_axis_factors(levels, axis)):
            loss = 2 * _VALID_LOSS + p * loss
        out.append(loss // 2)
    return tuple(out)


def center_crop(tensor, shape):
    """Crop the trailing axes of an array to ``shape``, keeping the centre.

    Parameters
    ----------
    tensor : torch.Tensor or ndarray of shape (..., *S)
        Any array that supports basic slicing.
    shape : sequence of int, length ``len(S)``
        Target shape of the trailing axes, each <= S with an even difference.

    Returns
    -------
    cropped : same type as ``tensor``, shape (..., *shape)
        A view, not a copy.

    Raises
    ------
    ValueError
        If ``shape`` has more axes than the array, is larger on an axis, or
        differs by an odd number of pixels (no exact centre).

    Examples
    --------
    >>> import numpy as np
    >>> center_crop(np.arange(10).reshape(2, 5), (3,))
    array([[1, 2, 3],
           [6, 7, 8]])
    """
    shape = tuple(int(s) for s in shape)
    have = tuple(tensor.shape)
    if len(shape) > len(have):
        raise ValueError(f"cannot crop an array of shape {have} to {len(shape)} axes {shape}")
    trailing = have[len(have) - len(shape):]
    if any(s > t or s < 0 or (t - s) % 2 for s, t in zip(shape, trailing, strict=True)):
        raise ValueError(
            f"cannot centre-crop shape {have} to {shape} on the trailing axes: each target "
            "size must be <= the array's, with an even difference"
        )
    index = (Ellipsis, *(slice((t - s) // 2, (t - s) // 2 + s) for s, t in
                          zip(shape, trailing, strict=True)))
    return tensor[index]


def anisotropic_pooling(spacing, *, depth: int) -> list[tuple[int, ...]]:
    """Per-level pooling factors that make the voxels of a stack more isotropic.

    Parameters
    ----------
    spacing : sequence of float, length 2 or 3
        Physical pixel size per axis, e.g. (z, y, x) in micrometres.
    depth : int
        Number of pooling levels.

    Returns
    -------
    pooling : list of ``depth`` tuples of int in {1, 2}

    Notes
    -----
    At each level, the current spacing of an axis is its spacing times the
    product of its factors so far. An axis is pooled by 2 at the level when
    its current spacing is below twice the smallest current spacing, and is
    left alone (factor 1) otherwise: a coarse axis waits until the fine axes
    have caught up to within a factor 2. Isotropic spacing pools every axis at
    every level.

    Examples
    --------
    >>> anisotropic_pooling((2.0, 0.5, 0.5), depth=4)
    [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    """
    depth = _check_int("depth", depth, minimum=0)
    try:
        current = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be 2 or 3 positive numbers, got {spacing!r}") from None
    if len(current) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in current):
        raise ValueError(f"spacing must be 2 or 3 positive numbers, got {spacing!r}")
    levels = []
    for _ in range(depth):
        threshold = 2 * min(current)
        factors = tuple(2 if s < threshold else 1 for s in current)
        current = [s * f for s, f in zip(current, factors, strict=True)]
        levels.append(factors)
    return levels


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter values in a model (only those requiring grad if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------
# The network


def _group_count(channels: int) -> int:
    """The largest divisor of ``channels`` that is at most 8."""
    return max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)


def _norm_layer(norm: str, ndim: int, channels: int) -> nn.Module:
    if norm == "batch":
        return (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.GroupNorm(_group_count(channels), channels)


def _double_conv(ndim: int, in_channels: int, out_channels: int, *, padding: str,
                 norm: str) -> nn.Sequential:
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        # A bias before a norm layer is cancelled by its mean subtraction.
        layers.append(conv(cin, out_channels, kernel_size=3, padding=1 if padding == "same" else 0,
                           bias=norm == "none"))
        if norm != "none":
            layers.append(_norm_layer(norm, ndim, out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _fan_in(module: nn.Module) -> int:
    """Inputs that reach one output value (the paper's N in std = sqrt(2 / N))."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Kernel = stride: each output pixel sees one kernel tap per input channel,
        # so counting the whole kernel would make the up path's activations shrink.
        return module.in_channels // module.groups
    return module.in_channels // module.groups * math.prod(module.kernel_size)


class UNet(nn.Module):
    """The U-Net of Ronneberger et al. (2015), 2D or 3D.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial axes.
    in_channels : int
        Input channels.
    out_channels : int
        Output channels (classes).
    depth : int
        Number of poolings (4 in the paper).
    features : int
        Features at the first level, doubling per level (64 in the paper).
    padding : {"same", "valid"}
        Zero-padded convolutions, or unpadded ones with centre-cropped skip
        connections as in the paper.
    norm : {"none", "batch", "group", "instance"}
        Normalisation after each 3x3 convolution. Group norm uses the largest
        number of groups <= min(8, channels) that divides the channels.
    dropout : float
        Dropout probability on the bottleneck's output (the end of the
        contracting path, as in the paper); 0 = none.
    pooling : list of ``depth`` tuples of ``ndim`` ints in {1, 2}, optional
        Pooling factor per level and axis; None = 2 everywhere. See
        :func:`anisotropic_pooling`.

    Notes
    -----
    ``forward`` takes ``(N, in_channels, *spatial)`` and returns logits of
    shape ``(N, out_channels, *valid_output_shape(spatial))``. Weights are
    initialised as in the paper (He et al.): Normal(0, sqrt(2 / N)) with N the
    number of inputs of one output value, i.e. kernel volume x input channels
    for a convolution and input channels for an up-convolution (kernel =
    stride, so one tap reaches each output pixel); biases 0; norm layers 1 and 0.

    ``config`` holds the constructor arguments as plain Python values, so a
    checkpoint can store it next to the state dict and ``UNet(**config)``
    rebuilds the architecture.

    Examples
    --------
    >>> model = UNet(ndim=2, depth=2, features=4)
    >>> model(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 2, 32, 32])
    """

    def __init__(self, *, ndim: int = 2, in_channels: int = 1, out_channels: int = 2,
                 depth: int = 4, features: int = 64, padding: str = "same",
                 norm: str = "none", dropout: float = 0.0, pooling=None):
        super().__init__()
        ndim = _check_ndim(ndim)
        in_channels = _check_int("in_channels", in_channels, minimum=1)
        out_channels = _check_int("out_channels", out_channels, minimum=1)
        depth = _check_int("depth", depth, minimum=0)
        features = _check_int("features", features, minimum=1)
        padding = _check_padding(padding)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        levels = _normalise_pooling(pooling, ndim=ndim, depth=depth)
        self._config = {
            "ndim": ndim, "in_channels": in_channels, "out_channels": out_channels,
            "depth": depth, "features": features, "padding": padding, "norm": norm,
            "dropout": float(dropout), "pooling": [list(f) for f in levels],
        }
        self._levels = levels

        pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
        up = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        widths = [features * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin = in_channels
        for level in range(depth):
            self.down.append(_double_conv(ndim, cin, widths[level], padding=padding, norm=norm))
            self.pools.append(pool(kernel_size=levels[level], stride=levels[level]))
            cin = widths[level]
        self.bottleneck = _double_conv(ndim, cin, widths[depth], padding=padding, norm=norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Built deepest first, the order in which forward uses them.
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(up(widths[level + 1], widths[level], kernel_size=levels[level],
                               stride=levels[level]))
            self.up_blocks.append(
                _double_conv(ndim, 2 * widths[level], widths[level], padding=padding, norm=norm)
            )
        self.head = conv(widths[0], out_channels, kernel_size=1)
        self.reset_parameters()

    # -- configuration -----------------------------------------------------

    @property
    def config(self) -> dict:
        """The constructor arguments as plain Python values (a fresh copy)."""
        return {k: ([list(f) for f in v] if k == "pooling" else v) for k, v in self._config.items()}

    def _shape_args(self) -> dict:
        c = self._config
        return {"ndim": c["ndim"], "depth": c["depth"], "pooling": self._levels}

    def pooling_factor(self) -> tuple[int, ...]:
        """:func:`pooling_factor` for this model."""
        return pooling_factor(**self._shape_args())

    def receptive_field(self) -> tuple[int, ...]:
        """:func:`receptive_field` for this model."""
        return receptive_field(**self._shape_args())

    def valid_output_shape(self, input_shape) -> tuple[int, ...]:
        """:func:`valid_output_shape` for this model."""
        return valid_output_shape(input_shape, padding=self._config["padding"],
                                  **self._shape_args())

    def valid_input_shape(self, min_shape) -> tuple[int, ...]:
        """:func:`valid_input_shape` for this model."""
        return valid_input_shape(min_shape, padding=self._config["padding"],
                                 **self._shape_args())

    def border(self) -> tuple[int, ...]:
        """:func:`border` for this model."""
        return border(padding=self._config["padding"], **self._shape_args())

    # -- weights -----------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He initialisation: conv weights ~ Normal(0, sqrt(2 / fan_in)), biases 0."""
        for module in self.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.weight.normal_(0.0, math.sqrt(2.0 / _fan_in(module)))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm):
                if module.weight is not None:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                if getattr(module, "running_mean", None) is not None:
                    module.reset_running_stats()

    # -- forward -----------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        c = self._config
        if x.ndim != c["ndim"] + 2 or x.shape[1] != c["in_channels"]:
            raise ValueError(
                f"UNet(ndim={c['ndim']}, in_channels={c['in_channels']}) expects input of shape "
                f"(N, {c['in_channels']}, <{c['ndim']} spatial axes>), got {tuple(x.shape)}"
            )
        try:
            self.valid_output_shape(tuple(x.shape[2:]))
        except ValueError as error:
            raise ValueError(f"UNet input of shape {tuple(x.shape)}: {error}") from None

    def _forward_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, pool in zip(self.down, self.pools, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips), strict=True):
            x = up(x)
            if self._config["padding"] == "valid":  # with same padding, the shapes agree
                skip = center_crop(skip, x.shape[2:])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Parameters
        ----------
        x : Tensor of shape (N, in_channels, *S)
            ``S`` must be a valid spatial shape (see :meth:`valid_input_shape`).

        Returns
        -------
        logits : Tensor of shape (N, out_channels, *valid_output_shape(S))
            In the input's dtype, or the autocast dtype under autocast.
        """
        self._check_input(x)
        return self._forward_unchecked(x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())
