"""Data augmentation for training, on batched torch tensors.

A training batch is three tensors on one device (CPU or CUDA):

* ``image``: float, shape ``(N, C, *S)``;
* ``targets``: integer class ids (any integer dtype, or bool), shape ``(N, *S)``;
* ``weights``: float per-pixel loss weights, shape ``(N, *S)``;

with ``S = (Y, X)`` or ``(Z, Y, X)``. The transforms are those of the U-Net
paper (Ronneberger et al., 2015) plus the usual cheap ones:

1. :func:`elastic_displacement` and :func:`warp`: a smooth random
   deformation, from displacement vectors drawn on a coarse grid of control
   points and interpolated with cubic convolution;
2. :func:`flip_rot90`: random flips along every axis and quarter turns in the
   (Y, X) plane;
3. :func:`intensity`: random contrast, brightness, gamma and noise (image
   only).

:class:`Augment` chains them with fixed settings.

Randomness comes only from a CPU ``torch.Generator`` given by the caller. Every
random number is drawn on the CPU and then moved to the tensors' device, so a
seed gives the same batch on any device: equal up to float rounding for the
image and the weights, and equal to the bit for the targets. The last needs
more than equal random numbers, because nearest-neighbour sampling jumps
wherever a sampling position crosses a half pixel, and a last-bit difference
there picks another pixel. So the displacement field and the sampling
positions of the targets are computed with element-wise additions and
multiplications only (no reductions, no fused or library interpolation
kernels), which IEEE arithmetic rounds the same on every device.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F

__all__ = ["Augment", "elastic_displacement", "flip_rot90", "intensity", "warp"]

# Keys' cubic convolution parameter. torch's "bicubic" modes use the same
# value, so the 2D field equals F.interpolate(mode="bicubic", align_corners=True).
_CUBIC_A = -0.75


# ---------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------


def _check_real(name: str, value, *, minimum: float = 0.0, below: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (below is not None and value >= below):
        bound = f"in [{minimum}, {below})" if below is not None else f">= {minimum}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_generator(generator, *, optional: bool = False) -> None:
    if generator is None and optional:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    if generator.device.type != "cpu":
        # A CUDA generator gives other numbers than a CPU one for the same
        # seed: results would depend on the device.
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")


def _check_spatial(shape) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of 2 or 3 sizes, got {shape!r}") from None
    if len(dims) not in (2, 3) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in dims
    ):
        raise ValueError(f"shape must be 2 or 3 positive integers, got {shape!r}")
    return tuple(int(n) for n in dims)


def _check_image(image) -> tuple[int, ...]:
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim not in (4, 5):
        raise ValueError(
            f"image must have shape (N, C, Y, X) or (N, C, Z, Y, X), got {tuple(image.shape)}"
        )
    if not image.dtype.is_floating_point:
        raise ValueError(f"image must be a float tensor, got dtype {image.dtype}")
    return tuple(image.shape[2:])


def _check_batch(image, targets, weights) -> tuple[int, ...]:
    """Spatial shape S of a consistent (image, targets, weights) batch."""
    spatial = _check_image(image)
    expected = (image.shape[0], *spatial)
    for name, tensor in (("targets", targets), ("weights", weights)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} to match image {tuple(image.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
        if tensor.device != image.device:
            raise ValueError(f"{name} is on {tensor.device} but image is on {image.device}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex:
        raise ValueError(f"targets must hold integer class ids, got dtype {targets.dtype}")
    if not weights.dtype.is_floating_point:
        raise ValueError(f"weights must be a float tensor, got dtype {weights.dtype}")
    return spatial


# ---------------------------------------------------------------------------
# elastic deformation
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _cubic_matrix(points: int, size: int) -> torch.Tensor:
    """Weights of ``points`` evenly spaced control values at ``size`` pixels.

    Returns a float64 CPU tensor of shape (points, size): column ``o`` holds
    the weights of the control values at pixel ``o`` under cubic convolution
    with align-corners spacing (control ``j`` sits at pixel
    ``j * (size - 1) / (points - 1)``) and edge-clamped taps, as in torch's
    bicubic upsampling. Cached (a training run uses one patch shape): callers
    must not modify it.
    """
    out = torch.zeros(points, size, dtype=torch.float64)
    pixels = torch.arange(size)
    if size == 1:
        out[0, 0] = 1.0
        return out
    # Integer numerator: positions of control pixels come out exact, so the
    # field equals the drawn values there.
    position = (pixels * (points - 1)).to(torch.float64) / (size - 1)
    base = position.floor()
    frac = position - base
    a = _CUBIC_A
    for tap in range(-1, 3):
        s = (frac - tap).abs()
        near = ((a + 2) * s - (a + 3)) * s * s + 1
        far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
        w = torch.where(s <= 1, near, torch.where(s < 2, far, torch.zeros_like(s)))
        index = (base.long() + tap).clamp(0, points - 1)
        out.index_put_((index, pixels), w, accumulate=True)
    return out


def _interpolate_controls(controls: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, K, g, ..., g) control values -> (B, K, *shape), separable cubic.

    One axis at a time, as a sum of broadcast products written out term by
    term: a matmul or einsum would sum in a device-dependent order.
    """
    out = controls
    for axis, size in enumerate(shape):
        dim = 2 + axis
        weights = _cubic_matrix(controls.shape[dim], size).to(controls.device, controls.dtype)
        moved = out.movedim(dim, -1).unsqueeze(-1)  # (..., g, 1)
        acc = moved[..., 0, :] * weights[0]
        for j in range(1, weights.shape[0]):
            acc = acc + moved[..., j, :] * weights[j]
        out = acc.movedim(-1, dim)
    return out


def elastic_displacement(shape, *, sigma: float = 10.0, grid: int = 3, batch: int | None = None,
                         generator: torch.Generator | None = None, device=None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random smooth displacement field: the U-Net paper's elastic deformation.

    Displacement vectors are drawn at ``grid`` control points per axis,
    evenly spaced with the first and last on the border pixels (for
    ``grid=3``: the corners, the edge midpoints and the centre), each
    component from a normal distribution with standard deviation `sigma`
    pixels. Between the control points they are interpolated with separable
    cubic convolution (Keys, a = -0.75; edge-clamped), in 2D and in 3D: in 2D
    this is ``F.interpolate(mode="bicubic", align_corners=True)``.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape ``(Y, X)`` or ``(Z, Y, X)``.
    sigma : float
        Standard deviation of each displacement component at the control
        points, in pixels; 0 gives a zero field.
    grid : int
        Control points per axis, >= 2.
    batch : int, optional
        Number of independent fields. None: a single field, without the
        batch axis.
    generator : torch.Generator, optional
        CPU generator the control values are drawn from (``batch * ndim *
        grid**ndim`` normal numbers, in float32 whatever `dtype` is). None:
        torch's global generator.
    device : torch.device or str, optional
        Where the field is computed and returned; default the CPU.
    dtype : torch.dtype
        Float dtype of the field.

    Returns
    -------
    displacement : Tensor of shape (ndim, *shape) or (batch, ndim, *shape)
        Displacement in pixels; component ``k`` is along spatial axis ``k``
        (``(y, x)`` or ``(z, y, x)``). At a pixel that holds a control point
        it is exactly the drawn value.

    Notes
    -----
    Cubic convolution interpolates but is not bounded by its control values:
    in about half of the draws the largest displacement lies between control
    points, at up to about 1.3 times the largest control value (for
    ``grid=3``).

    The field is computed with element-wise float multiplications and
    additions only, from weights computed on the CPU, so that it is the same
    to the bit on every device (see the module notes).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> elastic_displacement((64, 48), sigma=10.0, generator=g).shape
    torch.Size([2, 64, 48])
    """
    shape = _check_spatial(shape)
    sigma = _check_real("sigma", sigma)
    grid = _check_int("grid", grid, minimum=2)
    if batch is not None:
        batch = _check_int("batch", batch, minimum=0)
    _check_generator(generator, optional=True)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a float dtype, got {dtype}")
    ndim = len(shape)
    count = 1 if batch is None else batch
    controls = torch.randn((count, ndim, *(grid,) * ndim), generator=generator) * sigma
    field = _interpolate_controls(controls.to(device=device, dtype=dtype), shape)
    return field[0] if batch is None else field


def _reflect_round(position: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest pixel index of a position reflected into [0, size - 1].

    The same reflection (about the border pixel centres) and the same
    round-half-to-even as grid_sample with padding_mode="reflection",
    align_corners=True, mode="nearest".
    """
    if size == 1:
        return torch.zeros(position.shape, dtype=torch.long, device=position.device)
    span = size - 1
    folded = torch.fmod(position.abs(), 2 * span)
    folded = torch.where(folded > span, 2 * span - folded, folded)
    return folded.round().long()


def warp(image: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
         displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deform image, targets and weights with one displacement field.

    ``output(p) = input(p + displacement(p))`` for every pixel ``p``; outside
    the input, positions are reflected about the border pixels.

    Parameters
    ----------
    image : Tensor of shape (N, C, Y, X) or (N, C, Z, Y, X)
        Float image, sampled with bicubic interpolation in 2D and trilinear
        in 3D (grid_sample has no tricubic mode).
    targets : Tensor of shape (N, Y, X) or (N, Z, Y, X)
        Class ids, any integer dtype or bool, sampled at the nearest pixel:
        every output value is an input value of the same dtype.
    weights : Tensor of shape (N, Y, X) or (N, Z, Y, X)
        Float loss weights, sampled with (tri)linear interpolation.
    displacement : Tensor of shape (ndim, *S) or (N, ndim, *S)
        Displacement in pixels along the spatial axes in order ``(z,) y, x``
        (as made by :func:`elastic_displacement`), shared by the batch or one
        per sample. Must be on the tensors' device.

    Returns
    -------
    image, targets, weights : Tensor
        New tensors with the inputs' shapes, dtypes and device.

    Notes
    -----
    Bicubic interpolation may overshoot the input range near sharp edges by
    a few percent. The targets are gathered at indices computed in pixel
    units here rather than by grid_sample, which would have to round-trip the
    ids through float: exact for any integer dtype, and the same on every
    device. Their reflection and rounding are grid_sample's.

    Examples
    --------
    >>> image, weights = torch.rand(1, 1, 8, 8), torch.ones(1, 8, 8)
    >>> targets = torch.zeros(1, 8, 8, dtype=torch.uint8)
    >>> shift = torch.zeros(2, 8, 8)
    >>> shift[1] = 2.0  # sample two pixels to the right
    >>> out = warp(image, targets, weights, shift)[0]
    >>> torch.allclose(out[..., :6], image[..., 2:], atol=1e-5)
    True
    """
    spatial = _check_batch(image, targets, weights)
    ndim, n = len(spatial), image.shape[0]
    if not isinstance(displacement, torch.Tensor) or not displacement.dtype.is_floating_point:
        raise ValueError("displacement must be a float tensor")
    if tuple(displacement.shape) == (ndim, *spatial):
        displacement = displacement.unsqueeze(0)
    elif tuple(displacement.shape) != (n, ndim, *spatial):
        raise ValueError(
            f"displacement must have shape {(ndim, *spatial)} or {(n, ndim, *spatial)} "
            f"for image {tuple(image.shape)}, got {tuple(displacement.shape)}"
        )
    if displacement.device != image.device:
        raise ValueError(f"displacement is on {displacement.device} but image is on {image.device}")

    positions = []  # per axis, (N or 1, *S) sampling position in pixels
    for axis, size in enumerate(spatial):
        view = [1] * (ndim + 1)
        view[axis + 1] = size
        pixel = torch.arange(size, device=image.device, dtype=displacement.dtype).view(view)
        positions.append(pixel + displacement[:, axis])
    positions = [p.expand(n, *spatial) for p in positions]

    # grid_sample wants [-1, 1] with align_corners=True, components last and reversed.
    normalised = [p * 2.0 / (size - 1) - 1.0 if size > 1 else torch.zeros_like(p)
                  for p, size in zip(positions, spatial, strict=True)]
    grid = torch.stack(normalised[::-1], dim=-1)

    def sample(x: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="reflection",
                             align_corners=True)

    out_image = sample(image, "bicubic" if ndim == 2 else "bilinear")
    out_weights = sample(weights.unsqueeze(1), "bilinear")[:, 0]

    flat = torch.zeros((), dtype=torch.long, device=image.device)
    for p, size in zip(positions, spatial, strict=True):
        flat = flat * size + _reflect_round(p, size)
    # Only a NaN displacement can leave the range; it must not index out of bounds.
    flat = flat.clamp(0, math.prod(spatial) - 1)
    out_targets = targets.reshape(n, -1).gather(1, flat.reshape(n, -1)).reshape(targets.shape)
    return out_image, out_targets, out_weights


# ---------------------------------------------------------------------------
# flips and quarter turns
# ---------------------------------------------------------------------------


def _dihedral(x: torch.Tensor, axes: list[int], turns: int, lead: int) -> torch.Tensor:
    """Flip `axes` (spatial numbering) then turn `turns` quarters in the last two axes."""
    if axes:
        x = torch.flip(x, [lead + a for a in axes])
    if turns:
        x = torch.rot90(x, turns, (x.ndim - 2, x.ndim - 1))
    return x


def flip_rot90(image: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, *,
               generator: torch.Generator, flip: bool = True,
               rot90: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random flips along every spatial axis and quarter turns in the (Y, X) plane.

    Each sample gets its own transform, the same for its image, targets and
    weights: each spatial axis (z included in 3D) is flipped with
    probability 1/2, then the (Y, X) plane is turned by 0, 90, 180 or 270
    degrees with equal probability; only by 0 or 180 degrees when Y != X, so
    that the shape is kept. Z is never mixed with Y or X.

    Parameters
    ----------
    image : Tensor of shape (N, C, Y, X) or (N, C, Z, Y, X)
        Float image.
    targets : Tensor of shape (N, Y, X) or (N, Z, Y, X)
        Integer class ids.
    weights : Tensor of shape (N, Y, X) or (N, Z, Y, X)
        Float loss weights.
    generator : torch.Generator
        CPU generator; draws ``N * ndim`` flips (if `flip`), then ``N`` turns
        (if `rot90`).
    flip, rot90 : bool
        Enable the flips, the turns.

    Returns
    -------
    image, targets, weights : Tensor
        Same shapes, dtypes and device as the inputs; the inputs themselves
        when both `flip` and `rot90` are False.
    """
    spatial = _check_batch(image, targets, weights)
    _check_generator(generator)
    flip, rot90 = _check_bool("flip", flip), _check_bool("rot90", rot90)
    if not (flip or rot90):
        return image, targets, weights
    ndim, n = len(spatial), image.shape[0]
    flips = (torch.randint(0, 2, (n, ndim), generator=generator).tolist() if flip
             else [[0] * ndim] * n)
    if rot90:
        square = spatial[-1] == spatial[-2]
        turns = torch.randint(0, 4 if square else 2, (n,), generator=generator)
        turns = (turns if square else 2 * turns).tolist()
    else:
        turns = [0] * n
    out = ([], [], [])
    for i in range(n):
        axes = [a for a in range(ndim) if flips[i][a]]
        out[0].append(_dihedral(image[i], axes, turns[i], lead=1))
        out[1].append(_dihedral(targets[i], axes, turns[i], lead=0))
        out[2].append(_dihedral(weights[i], axes, turns[i], lead=0))
    return tuple(torch.stack(parts) for parts in out)


# ---------------------------------------------------------------------------
# intensity
# ---------------------------------------------------------------------------


def intensity(image: torch.Tensor, *, generator: torch.Generator, scale: float = 0.2,
              shift: float = 0.1, gamma: float = 0.2, noise: float = 0.03) -> torch.Tensor:
    """Random contrast, brightness, gamma and noise, per sample and channel.

    In this order, each with its own random parameter per sample and
    channel, and skipped when its option is 0:

    1. multiply by a factor uniform in ``[1 - scale, 1 + scale]``;
    2. add an offset uniform in ``[-shift, shift]``;
    3. gamma: with ``lo, hi`` the channel's minimum and maximum,
       ``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` with
       ``g = exp(uniform(-gamma, gamma))`` (keeps the minimum, the maximum and
       the order of values, and works on images with negative values);
    4. add Gaussian noise whose standard deviation is uniform in
       ``[0, noise]``.

    Parameters
    ----------
    image : Tensor of shape (N, C, Y, X) or (N, C, Z, Y, X)
        Float image (normalised intensities: the options are in its units).
    generator : torch.Generator
        CPU generator; draws ``N * C`` uniforms per enabled step, in the
        order above, then ``image.numel()`` normal numbers for the noise.
    scale : float
        In [0, 1), so that the factor stays positive.
    shift, gamma, noise : float
        >= 0.

    Returns
    -------
    image : Tensor
        Same shape, dtype and device; the input itself when every option
        is 0.

    Notes
    -----
    The noise is drawn on the CPU and copied to the device, like every other
    random number here, so that results do not depend on the device.
    """
    spatial = _check_image(image)
    _check_generator(generator)
    scale = _check_real("scale", scale, below=1.0)
    shift, gamma, noise = (_check_real(k, v) for k, v in
                           (("shift", shift), ("gamma", gamma), ("noise", noise)))
    n, c = image.shape[:2]
    per_channel = (n, c) + (1,) * len(spatial)

    def uniform(low: float, high: float) -> torch.Tensor:
        # Parameters are computed on the CPU in float64 and only then moved,
        # so that exp() etc. round the same whatever the device.
        u = torch.rand((n, c), generator=generator, dtype=torch.float64)
        value = low + (high - low) * u
        return value.view(per_channel)

    def to_image(value: torch.Tensor) -> torch.Tensor:
        return value.to(device=image.device, dtype=image.dtype)

    out = image
    if scale:
        out = out * to_image(uniform(1.0 - scale, 1.0 + scale))
    if shift:
        out = out + to_image(uniform(-shift, shift))
    if gamma:
        exponent = to_image(uniform(-gamma, gamma).exp())
        dims = tuple(range(2, image.ndim))
        lo = out.amin(dim=dims, keepdim=True)
        span = out.amax(dim=dims, keepdim=True) - lo
        # A constant channel stays as it is (0 ** g == 0).
        unit = (out - lo) / torch.where(span > 0, span, torch.ones_like(span))
        out = lo + span * unit.pow(exponent)
    if noise:
        std = to_image(uniform(0.0, noise))
        field = torch.randn(image.shape, generator=generator, dtype=torch.float32)
        out = out + to_image(field) * std
    return out


# ---------------------------------------------------------------------------
# the training-time pipeline
# ---------------------------------------------------------------------------


class Augment:
    """Elastic deformation, flips and quarter turns, intensity changes.

    Parameters
    ----------
    elastic : bool
        Deform with :func:`elastic_displacement` and :func:`warp`.
    elastic_sigma : float
        Standard deviation of the control displacements, in pixels, >= 0.
    elastic_grid : int
        Control points per axis, >= 2.
    elastic_probability : float
        Probability in [0, 1] that a sample is deformed; the others are left
        exactly as they are.
    flip, rot90 : bool
        Random flips along every axis, quarter turns in (Y, X)
        (:func:`flip_rot90`).
    scale, shift, gamma, noise : float
        Intensity options of :func:`intensity`; 0 disables each.

    Attributes
    ----------
    config : dict
        The options above, as plain Python values.

    Examples
    --------
    >>> augment = Augment(elastic_sigma=8.0, noise=0.0)
    >>> image, weights = torch.rand(2, 1, 32, 32), torch.ones(2, 32, 32)
    >>> targets = torch.zeros(2, 32, 32, dtype=torch.uint8)
    >>> out = augment(image, targets, weights, generator=torch.Generator().manual_seed(1))
    >>> [tuple(t.shape) for t in out]
    [(2, 1, 32, 32), (2, 32, 32), (2, 32, 32)]
    """

    def __init__(self, *, elastic: bool = True, elastic_sigma: float = 10.0,
                 elastic_grid: int = 3, elastic_probability: float = 1.0, flip: bool = True,
                 rot90: bool = True, scale: float = 0.2, shift: float = 0.1,
                 gamma: float = 0.2, noise: float = 0.03):
        self.config = {
            "elastic": _check_bool("elastic", elastic),
            "elastic_sigma": _check_real("elastic_sigma", elastic_sigma),
            "elastic_grid": _check_int("elastic_grid", elastic_grid, minimum=2),
            "elastic_probability": _check_real("elastic_probability", elastic_probability),
            "flip": _check_bool("flip", flip),
            "rot90": _check_bool("rot90", rot90),
            "scale": _check_real("scale", scale, below=1.0),
            "shift": _check_real("shift", shift),
            "gamma": _check_real("gamma", gamma),
            "noise": _check_real("noise", noise),
        }
        if self.config["elastic_probability"] > 1:
            raise ValueError(f"elastic_probability must be in [0, 1], got {elastic_probability!r}")

    @classmethod
    def none(cls) -> Augment:
        """An Augment that returns its inputs unchanged."""
        return cls(elastic=False, flip=False, rot90=False, scale=0.0, shift=0.0, gamma=0.0,
                   noise=0.0)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({options})"

    def __call__(self, image: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, *,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Parameters
        ----------
        image : Tensor of shape (N, C, Y, X) or (N, C, Z, Y, X)
            Float image.
        targets : Tensor of shape (N, Y, X) or (N, Z, Y, X)
            Integer class ids.
        weights : Tensor of shape (N, Y, X) or (N, Z, Y, X)
            Float loss weights.
        generator : torch.Generator
            CPU generator; the same seed gives the same batch on any device.

        Returns
        -------
        image, targets, weights : Tensor
            Same shapes, dtypes and device as the inputs (the input tensors
            themselves where every step that would change them is off).
        """
        spatial = _check_batch(image, targets, weights)
        _check_generator(generator)
        cfg = self.config
        n = image.shape[0]
        if cfg["elastic"] and n:
            chosen = torch.rand(n, generator=generator) < cfg["elastic_probability"]
            picked = chosen.nonzero().flatten()
            count = len(picked)
            if count:
                field = elastic_displacement(
                    spatial, sigma=cfg["elastic_sigma"], grid=cfg["elastic_grid"], batch=count,
                    generator=generator, device=image.device, dtype=image.dtype)
                if count == n:
                    image, targets, weights = warp(image, targets, weights, field)
                else:
                    index = picked.to(image.device)
                    parts = warp(image[index], targets[index], weights[index], field)
                    image, targets, weights = (
                        whole.index_copy(0, index, part)
                        for whole, part in zip((image, targets, weights), parts, strict=True))
        image, targets, weights = flip_rot90(image, targets, weights, generator=generator,
                                             flip=cfg["flip"], rot90=cfg["rot90"])
        image = intensity(image, generator=generator, scale=cfg["scale"], shift=cfg["shift"],
                          gamma=cfg["gamma"], noise=cfg["noise"])
        return image, targets, weights
