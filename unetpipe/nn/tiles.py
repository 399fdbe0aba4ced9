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
    from .model import border, pooling_factor, receptive_field, valid_input_shape

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
        rf = receptive_field(**arch)
        halo = tuple(r // 2 for r in rf) if halo is None else tuple(halo)
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


def forward_windows(model, windows: np.ndarray, block: Sequence[int], *, device,
                    amp: bool = False, tta: bool = False) -> np.ndarray:
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
        return total.float().cpu().numpy()


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
