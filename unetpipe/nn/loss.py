"""Training losses: the U-Net paper's weighted cross entropy, and a soft Dice term.

With ``"valid"`` padding the network's output is smaller than its input, so
targets and weights cut to the input's shape are centre-cropped to the
logits' spatial shape here; a target smaller than the logits is an error.

Both losses work in float32 whatever the logits' dtype (bf16 or fp16 under
autocast): a log-softmax in bf16 loses most of its digits.
"""

from __future__ import annotations

import torch

from .model import center_crop

__all__ = ["SegmentationLoss", "soft_dice_loss", "weighted_cross_entropy"]


def _crop_like(logits: torch.Tensor, tensor: torch.Tensor, name: str) -> torch.Tensor:
    """``tensor`` of shape (N, *S') cropped to the logits' (N, C, *S) as (N, *S)."""
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (N, C, *spatial), got {tuple(logits.shape)}")
    spatial = tuple(logits.shape[2:])
    if tensor.ndim != logits.ndim - 1 or tensor.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name} must have shape (N, *spatial) = ({logits.shape[0]}, *spatial) for logits "
            f"of shape {tuple(logits.shape)}, got {tuple(tensor.shape)}"
        )
    have = tuple(tensor.shape[1:])
    if any(h < s or (h - s) % 2 for h, s in zip(have, spatial, strict=True)):
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} cannot be centre-cropped to the logits' "
            f"spatial shape {spatial} (logits {tuple(logits.shape)}): each axis must be at least "
            "as large, larger by an even number"
        )
    return center_crop(tensor, spatial)


def _checked_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    targets = _crop_like(logits, targets, "targets")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class ids, got dtype {targets.dtype}")
    classes = logits.shape[1]
    # Out-of-range ids would be a device-side assert on a GPU; say what is wrong instead.
    if targets.numel() and (targets.min() < 0 or targets.max() >= classes):
        raise ValueError(
            f"targets must be class ids in [0, {classes - 1}] for logits with {classes} "
            f"channels, got values in [{int(targets.min())}, {int(targets.max())}]"
        )
    return targets.long()


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """The U-Net paper's energy: pixel-weighted cross entropy, averaged over the pixels.

    Parameters
    ----------
    logits : Tensor of shape (N, C, *S), float
        Network output (any float dtype; computed in float32).
    targets : Tensor of shape (N, *S'), integer
        Class id per pixel, in [0, C). ``S' >= S`` on every axis: a larger
        target (``"valid"`` padding) is centre-cropped to ``S``.
    weights : Tensor of shape (N, *S'), float
        Weight per pixel, cropped like ``targets``.

    Returns
    -------
    loss : Tensor of shape (), float32
        ``mean_x w(x) * -log softmax(logits)_{t(x)}(x)`` over all N * prod(S)
        pixels.

    Raises
    ------
    ValueError
        If the shapes do not fit (quoting them), or a target is out of range.

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 1, 2)
    >>> float(weighted_cross_entropy(logits, torch.tensor([[[0, 1]]]), torch.ones(1, 1, 2)))
    0.6931471824645996
    """
    targets = _checked_targets(logits, targets)
    weights = _crop_like(logits, weights, "weights")
    log_p = torch.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
    return (weights.float() * nll).mean()


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, *,
                   eps: float = 1e-6) -> torch.Tensor:
    """One minus the mean soft Dice coefficient of the foreground classes.

    Parameters
    ----------
    logits : Tensor of shape (N, C, *S), float
        Network output, C >= 2 (class 0 is background and is left out).
    targets : Tensor of shape (N, *S'), integer
        Class id per pixel; centre-cropped to ``S`` when larger.
    eps : float
        Added to numerator and denominator, so that a class absent from both
        prediction and target scores 1.

    Returns
    -------
    loss : Tensor of shape (), float32
        ``1 - mean_{c=1..C-1} (2 sum p_c g_c + eps) / (sum p_c + sum g_c + eps)``
        with ``p = softmax(logits)``, ``g`` the one-hot targets, and the sums
        over the batch and all pixels.

    Examples
    --------
    >>> logits = torch.tensor([[[[-20.0, 20.0]], [[20.0, -20.0]]]])
    >>> float(soft_dice_loss(logits, torch.tensor([[[1, 0]]]))) < 1e-6
    True
    """
    classes = logits.shape[1] if logits.ndim >= 2 else 0
    if classes < 2:
        raise ValueError(
            f"soft Dice needs logits with at least 2 channels (background + a class), "
            f"got shape {tuple(logits.shape)}"
        )
    targets = _checked_targets(logits, targets)
    p = torch.softmax(logits.float(), dim=1)
    ids = torch.arange(classes, device=targets.device).view(1, classes, *[1] * (targets.ndim - 1))
    g = (targets.unsqueeze(1) == ids).to(p.dtype)
    axes = [0, *range(2, p.ndim)]
    overlap = (p * g).sum(dim=axes)[1:]
    total = p.sum(dim=axes)[1:] + g.sum(dim=axes)[1:]
    return 1.0 - ((2.0 * overlap + eps) / (total + eps)).mean()


class SegmentationLoss:
    """Weighted cross entropy plus an optional soft Dice term.

    Parameters
    ----------
    dice : float
        Weight of :func:`soft_dice_loss`; 0 gives the paper's loss alone.

    Notes
    -----
    ``loss(logits, targets, weights)`` returns
    ``weighted_cross_entropy(logits, targets, weights) + dice * soft_dice_loss(logits, targets)``.
    ``config`` holds the constructor arguments, for checkpoints.

    Examples
    --------
    >>> loss = SegmentationLoss(dice=0.5)
    >>> loss.config
    {'dice': 0.5}
    """

    def __init__(self, *, dice: float = 0.0):
        if isinstance(dice, bool) or not isinstance(dice, int | float) or not dice >= 0 \
                or dice == float("inf"):
            raise ValueError(f"dice must be a finite number >= 0, got {dice!r}")
        self.dice = float(dice)

    @property
    def config(self) -> dict:
        """The constructor arguments as plain Python values."""
        return {"dice": self.dice}

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
        loss = weighted_cross_entropy(logits, targets, weights)
        if self.dice:
            loss = loss + self.dice * soft_dice_loss(logits, targets)
        return loss

    def __repr__(self) -> str:
        return f"SegmentationLoss(dice={self.dice!r})"
