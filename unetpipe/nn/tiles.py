"""Overlap-tile prediction of an image held in memory (the paper's strategy).

The image is predicted block by block, each block from a window that adds a
halo covering the network's receptive field, mirror-padded at the image
border. Window origins stay on the network's pooling grid, so the result does
not depend on the block size. :func:`predict_array` is what validation uses;
the chunked stage :mod:`unetpipe.stages.predict` reads and predicts its
windows with the same functions (:func:`tiling`, :func:`read_window`,
:func:`forward_windows`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

# Default block (output tile) per spatial axis when none is given.
DEFAULT_BLOCK = {2: (512, 512), 3: (64, 128, 128)}


def tiling(model_config: dict, spatial_shape: Sequence[int], *,
           block: Sequence[int] | None = None, halo: Sequence[int] | None = None):
    """Block shape, window shape and window offset for overlap-tile prediction.

    Parameters
    ----------
    model_config : dict
        The U-Net's constructor arguments (``UNet.config``).
    spatial_shape : sequence of int
        Shape of the image to predict (no channel axis).
    block : sequence of int, optional
        Output block per axis; rounded up to the pooling factor, and capped
        at the image (rounded up likewise). Default :data:`DEFAULT_BLOCK`.
    halo : sequence of int, optional
        Context added on each side of a block, for ``same`` padding; rounded
        up to the pooling factor. Default: half the receptive field.

    Returns
    -------
    block, window, offset : tuple of int
        A block at origin ``o`` is predicted from the input window starting
        at ``o - offset`` of size ``window``; its output is the window's
        output cropped to ``block`` (centred).
    """
    from .model import border, pooling_factor, valid_input_shape

    ndim = len(spatial_shape)
    arch = {"ndim": model_config["ndim"], "depth": model_config["depth"],
            "pooling": model_config.get("pooling")}
    if ndim != arch["ndim"]:
        raise ValueError(f"a {arch['ndim']}D model cannot predict an image of spatial shape "
                         f"{tuple(spatial_shape)}")
    f = pooling_factor(**arch)
    block = DEFAULT_BLOCK[ndim] if block is None else tuple(block)
    block = tuple(min(_ceil_to(int(b), p), _ceil_to(int(s), p))
                  for b, p, s in zip(block, f, spatial_shape, strict=True))
    padding = model_config.get("padding", "same")
    if padding == "same":
        halo = exact_halo(model_config) if halo is None else tuple(halo)
        halo = tuple(_ceil_to(int(h), p) for h, p in zip(halo, f, strict=True))
        window = tuple(b + 2 * h for b, h in zip(block, halo, strict=True))
        return block, window, halo
    lost = border(**arch, padding="valid")
    least = tuple(b + 2 * c for b, c in zip(block, lost, strict=True))
    window = valid_input_shape(least, **arch, padding="valid")
    # the window's output is larger than the block by the same amount for
    # every block size that is a multiple of the pooling factor
    offset = tuple(c + (w - b - 2 * c) // 2
                   for b, w, c in zip(block, window, lost, strict=True))
    return block, window, offset


def _ceil_to(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


def mirror_index(start: int, size: int, n: int) -> np.ndarray:
    """Source indices of positions ``start .. start + size - 1`` of an axis of length ``n``.

    Positions outside ``[0, n)`` are mirrored about the edge pixels, repeatedly
    when the axis is shorter than the pad (as ``np.pad(..., mode="reflect")``);
    an axis of one pixel repeats it.
    """
    i = np.arange(start, start + size)
    if n == 1:
        return np.zeros(size, np.intp)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i).astype(np.intp)


def read_window(source, start: Sequence[int], size: Sequence[int], *, read=None) -> np.ndarray:
    """A window of a (C, *S) array, mirror-padded where it leaves the array.

    Parameters
    ----------
    source : array-like of shape (C, *S)
        Anything with ``shape`` that ``read(source, box)`` can slice.
    start, size : sequence of int
        Window origin (may be negative) and shape, per spatial axis.
    read : callable, optional
        ``read(source, box) -> ndarray``; default ``np.asarray(source[box])``.

    Returns
    -------
    ndarray of shape (C, *size)
    """
    read = read or (lambda a, box: np.asarray(a[box]))
    spatial = source.shape[1:]
    index = [mirror_index(s, n, dim) for s, n, dim in zip(start, size, spatial, strict=True)]
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in index)
    data = read(source, (slice(None), *box))
    inside = all(s >= 0 and s + n <= dim for s, n, dim in zip(start, size, spatial, strict=True))
    if inside:
        return data
    local = [ix - b.start for ix, b in zip(index, box, strict=True)]
    return data[(slice(None), *np.ix_(*local))]


def _flip_sets(ndim: int, tta: bool) -> list[tuple[int, ...]]:
    """Tensor dims to flip for test-time augmentation: every subset of the spatial axes."""
    if not tta:
        return [()]
    axes = range(2, 2 + ndim)
    return [c for r in range(ndim + 1) for c in itertools.combinations(axes, r)]


def fold_batchnorm(model):
    """An inference copy of ``model`` with every BatchNorm folded into the convolution
    before it (the same function in eval mode, to float rounding, with one pass over
    the data fewer per layer). Other norms stay. Returns the copy, in eval mode."""
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    convs = (torch.nn.Conv2d, torch.nn.Conv3d)
    for module in model.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        items = list(module)
        for i, (conv, norm) in enumerate(itertools.pairwise(items)):
            if isinstance(conv, convs) and isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = torch.nn.Identity()
    return model


def channels_last(model):
    """The model with its weights in the channels-last memory format (``channels_last``
    for 2D, ``channels_last_3d`` for 3D): convolutions run faster so on CPUs (oneDNN)
    and GPUs (tensor cores). Returns the model."""
    import torch

    fmt = torch.channels_last if model.config["ndim"] == 2 else torch.channels_last_3d
    return model.to(memory_format=fmt)


def forward_windows(model, windows: np.ndarray, block: Sequence[int], *, device,
                    amp: bool = False, tta: bool = False,
                    channels_last: bool = False) -> np.ndarray:
    """Class probabilities of a batch of windows, cropped to their blocks.

    Parameters
    ----------
    model : unetpipe.nn.model.UNet
        In eval mode, on ``device``.
    windows : ndarray of float32, shape (B, C, *W)
    block : sequence of int
        Output block; the centre of each window's output is kept.
    device : torch.device
    amp : bool
        bf16 autocast (CUDA only).
    tta : bool
        Average the softmax over all flips of the spatial axes.
    channels_last : bool
        Pass the windows in the channels-last memory format (for a model
        converted by :func:`channels_last`).

    Returns
    -------
    ndarray of float32, shape (B, K, *block)
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4
                         else torch.channels_last_3d)
    flips = _flip_sets(len(block), tta)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=amp and device.type == "cuda"):
        total = None
        for dims in flips:
            y = model(torch.flip(x, dims) if dims else x)
            y = torch.softmax(y.float(), dim=1)
            if dims:
                y = torch.flip(y, dims)
            total = y if total is None else total.add_(y)
        if len(flips) > 1:
            total /= len(flips)
        crop = [(n - b) // 2 for n, b in zip(total.shape[2:], block, strict=True)]
        total = total[(slice(None), slice(None),
                       *(slice(c, c + b) for c, b in zip(crop, block, strict=True)))]
        return np.ascontiguousarray(total.float().cpu().numpy())


def predict_array(model, image, *, block: Sequence[int] | None = None,
                  halo: Sequence[int] | None = None, batch_size: int = 1, device=None,
                  amp: bool = False, tta: bool = False) -> np.ndarray:
    """Class probabilities of an image in memory, by overlap-tile prediction.

    Parameters
    ----------
    model : unetpipe.nn.model.UNet
        The network (put in eval mode here, and left so).
    image : ndarray of shape (C, *S)
        Preprocessed image, channel first.
    block, halo : sequence of int, optional
        See :func:`tiling`.
    batch_size : int
        Windows per forward pass.
    device : torch.device or str, optional
        Default: the model's device.
    amp : bool
        bf16 autocast (CUDA only).
    tta : bool
        Average over flips (see :func:`forward_windows`).

    Returns
    -------
    ndarray of float32, shape (K, *S)
        Softmax probabilities per class.
    """
    import torch

    image = np.asarray(image, dtype=np.float32)
    cfg = model.config
    _check_image_shape(cfg, image.shape, "the image")
    spatial = image.shape[1:]
    block, window, offset = tiling(cfg, spatial, block=block, halo=halo)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = np.zeros((cfg["out_channels"], *spatial), np.float32)
    origins = block_origins(spatial, block)
    for first in range(0, len(origins), batch_size):
        chunk = origins[first:first + batch_size]
        windows = np.stack([read_window(image, [o - f for o, f in zip(origin, offset,
                                                                       strict=True)], window)
                            for origin in chunk])
        probs = forward_windows(model, windows, block, device=device, amp=amp, tta=tta)
        for origin, p in zip(chunk, probs, strict=True):
            region, local = _clip(origin, block, spatial)
            out[(slice(None), *region)] = p[(slice(None), *local)]
    return out


HALO_TOLERANCE = 1e-3
"""Default tolerance of the ``auto`` halo: largest change of any probability."""

HALO_STEPS = 8
"""Candidate halos of :func:`effective_halo`: 1/8, 2/8, ... of the exact one."""


def exact_halo(model_config: dict) -> tuple[int, ...]:
    """Half the receptive field per axis, rounded up to the pooling factor: the
    halo with which overlap-tile prediction equals whole-image prediction."""
    from .model import pooling_factor, receptive_field

    arch = {"ndim": model_config["ndim"], "depth": model_config["depth"],
            "pooling": model_config.get("pooling")}
    return tuple(_ceil_to(r // 2, p) for r, p in zip(receptive_field(**arch),
                                                     pooling_factor(**arch), strict=True))


def probe_region(spatial_shape: Sequence[int], ndim: int) -> tuple[slice, ...]:
    """The centre of an image (at most 256 x 256, or 32 x 96 x 96 in a stack) on
    which :func:`effective_halo` measures."""
    size = (256, 256) if ndim == 2 else (32, 96, 96)
    return tuple(slice((n - min(n, c)) // 2, (n - min(n, c)) // 2 + min(n, c))
                 for n, c in zip(spatial_shape, size, strict=True))


def effective_halo(model, image, *, tolerance: float = HALO_TOLERANCE, device=None,
                   amp: bool = False) -> dict | None:
    """The smallest halo with which overlap-tile prediction of ``image`` stays
    within ``tolerance`` of whole-image prediction: the model's effective
    receptive field, measured.

    The reference is the exact prediction (one window with the exact halo,
    :func:`exact_halo`). The candidates are 1/8, 2/8, ... of the exact halo,
    rounded up to the pooling factor, predicted in blocks of half the image
    per axis, so that block seams cross it; the change falls as the halo
    grows, so the smallest that passes is found by bisection (three or four
    predictions).

    Parameters
    ----------
    model : unetpipe.nn.model.UNet
    image : ndarray of shape (C, *S)
        Real-looking input (a preprocessed image or a crop of one;
        :func:`probe_region`).
    tolerance : float
        Largest allowed change of any class probability at any pixel.
    device, amp
        As for :func:`predict_array`.

    Returns
    -------
    dict or None
        ``halo`` (per axis), ``exact`` (the exact halo), ``tolerance``,
        ``deviation`` (the largest change seen with ``halo``) and ``shape``
        (what was measured on); None for a valid-padding model (it sets its
        own context).
    """
    from .model import pooling_factor

    cfg = model.config
    if cfg.get("padding", "same") != "same":
        return None
    image = np.asarray(image, dtype=np.float32)
    spatial = image.shape[1:]
    factor = pooling_factor(ndim=cfg["ndim"], depth=cfg["depth"], pooling=cfg.get("pooling"))
    exact = exact_halo(cfg)
    whole = tuple(_ceil_to(n, p) for n, p in zip(spatial, factor, strict=True))
    reference = predict_array(model, image, block=whole, halo=exact, device=device, amp=amp)
    block = tuple(max(p, _ceil_to(n // 2, p)) for n, p in zip(spatial, factor, strict=True))
    candidates = []
    for step in range(1, HALO_STEPS + 1):
        halo = tuple(_ceil_to(math.ceil(e * step / HALO_STEPS), p)
                     for e, p in zip(exact, factor, strict=True))
        if halo not in candidates:
            candidates.append(halo)
    deviations = {}

    def deviation(i: int) -> float:
        if i not in deviations:
            probs = predict_array(model, image, block=block, halo=candidates[i], device=device,
                                  amp=amp)
            deviations[i] = float(np.abs(probs - reference).max())
        return deviations[i]

    # the change falls as the halo grows: the smallest that passes, by bisection
    low, high = 0, len(candidates) - 1  # the last is the exact halo: it passes
    while low < high:
        middle = (low + high) // 2
        if deviation(middle) <= tolerance:
            high = middle
        else:
            low = middle + 1
    return {"halo": list(candidates[low]), "exact": list(exact), "tolerance": float(tolerance),
            "deviation": deviation(low), "shape": list(spatial)}


def _check_image_shape(cfg: dict, shape: Sequence[int], what: str) -> None:
    if len(shape) != cfg["ndim"] + 1:
        raise ValueError(f"expected an image of shape (C, *S) with {cfg['ndim']} spatial axes, "
                         f"got {tuple(shape)}")
    if shape[0] != cfg["in_channels"]:
        raise ValueError(f"the model takes {cfg['in_channels']} channel(s), {what} has "
                         f"{shape[0]} (shape {tuple(shape)})")


def block_origins(spatial_shape: Sequence[int], block: Sequence[int]) -> list[tuple[int, ...]]:
    """Origins of the blocks covering an image, in raster order."""
    return list(itertools.product(*[range(0, s, b) for s, b in zip(spatial_shape, block,
                                                                   strict=True)]))


def _clip(origin, block, spatial):
    """The part of a block inside the image: (image region, block-local region)."""
    sizes = [min(b, s - o) for o, b, s in zip(origin, block, spatial, strict=True)]
    region = tuple(slice(o, o + n) for o, n in zip(origin, sizes, strict=True))
    local = tuple(slice(0, n) for n in sizes)
    return region, local
