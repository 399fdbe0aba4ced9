"""Prediction with a trained U-Net: overlap-tile inference.

:func:`predict_array` predicts an image held in memory block by block, each
block from a window that adds a halo covering the network's receptive
field, mirror-padded at the image border (the paper's overlap-tile
strategy). Window origins stay on the network's pooling grid, so the result
does not depend on the block size.
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


def predict_array(model, image, *, block: Sequence[int] | None = None,
                  halo: Sequence[int] | None = None, batch_size: int = 1, device=None,
                  amp: bool = False) -> np.ndarray:
    """Class probabilities of an image in memory, by overlap-tile prediction.

    Parameters
    ----------
    model : unetpipe.model.UNet
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

    Returns
    -------
    ndarray of float32, shape (K, *S)
        Softmax probabilities per class.
    """
    import torch

    image = np.asarray(image, dtype=np.float32)
    cfg = model.config
    if image.ndim != cfg["ndim"] + 1:
        raise ValueError(f"expected an image of shape (C, *S) with {cfg['ndim']} spatial axes, "
                         f"got {image.shape}")
    if image.shape[0] != cfg["in_channels"]:
        raise ValueError(f"the model takes {cfg['in_channels']} channel(s), the image has "
                         f"{image.shape[0]} (shape {image.shape})")
    spatial = image.shape[1:]
    block, window, offset = tiling(cfg, spatial, block=block, halo=halo)
    n_blocks = [math.ceil(s / b) for s, b in zip(spatial, block, strict=True)]
    covered = [n * b for n, b in zip(n_blocks, block, strict=True)]
    # pad so that every window lies inside: the offset before, the rest after
    pad = [(o, w - o - b + (c - s))
           for w, o, b, c, s in zip(window, offset, block, covered, spatial, strict=True)]
    padded = image
    for axis, (before, after) in enumerate(pad, start=1):
        # mirror about the edge pixel; a one-pixel axis can only repeat itself
        widths = [(0, 0)] * image.ndim
        widths[axis] = (before, after)
        padded = np.pad(padded, widths, mode="reflect" if image.shape[axis] > 1 else "edge")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = np.zeros((cfg["out_channels"], *covered), np.float32)
    origins = list(itertools.product(*[range(0, c, b) for c, b in zip(covered, block,
                                                                      strict=True)]))

    def region(origin, size):
        return (slice(None), *(slice(o, o + n) for o, n in zip(origin, size, strict=True)))

    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        windows = np.stack([padded[region(origin, window)] for origin in chunk])
        x = torch.from_numpy(windows).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=amp and device.type == "cuda"):
            y = torch.softmax(model(x).float(), dim=1).cpu().numpy()
        crop = [(n - b) // 2 for n, b in zip(y.shape[2:], block, strict=True)]
        for origin, probs in zip(chunk, y, strict=True):
            out[region(origin, block)] = probs[region(crop, block)]
    return out[(slice(None), *tuple(slice(0, s) for s in spatial))]
