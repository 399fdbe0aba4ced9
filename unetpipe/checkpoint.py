"""Checkpoints: self-describing, and safe to load.

A checkpoint is a dict of tensors and plain Python values only (numbers,
strings, lists, dicts, None), so it loads with ``torch.load(...,
weights_only=True)``, which refuses any pickled object. It describes itself:

``format``, ``version``
    ``"unetpipe-checkpoint"`` and the layout version.
``model``
    ``{"class": "UNet", "config": constructor arguments, "state_dict": ...}``.
``normalization``
    How the training images were preprocessed (percentiles, clip), so that
    prediction can warn when new images are normalised differently.
``targets``
    Target mode, class names, w0, sigma, class balance.
``data``
    Spacing, unit, axes and channel count of the training images; training
    and validation sample names.
``config``
    The resolved config of the run.
``iteration``, ``elapsed``, ``finished``
    Progress of the run.
``optimizer``, ``scheduler``, ``rng``, ``history``, ``best``
    What resuming needs (``checkpoint_last.pt`` only).
"""

from __future__ import annotations

import os

from .errors import InputError

FORMAT = "unetpipe-checkpoint"
VERSION = 1


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    import torch

    from .io import atomic_output

    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``.

    A bioimage.io model exported by unetpipe (a ``.zip`` package, its
    ``rdf.yaml``/``bioimageio.yaml``, or a folder holding one) is imported
    with :func:`unetpipe.bioimageio.import_model` into the same layout.

    Raises
    ------
    InputError
        The file is missing, is not a unetpipe checkpoint, or holds pickled
        objects (which are never unpickled).
    """
    import pickle

    path = os.fspath(path)
    if path.lower().endswith((".zip", ".yaml", ".yml")) or (
            os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n))
                                        for n in ("rdf.yaml", "bioimageio.yaml"))):
        from .bioimageio import import_model

        return import_model(path, map_location=map_location)

    import torch

    if not os.path.isfile(path):
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the offending object in its "Unsupported global" line
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        detail = lines[0].split(" was not", 1)[0].replace("WeightsUnpickler error: ", "") \
            if lines else type(e).__name__
        raise InputError(path, "refusing to load: the checkpoint holds objects other than "
                               f"tensors and plain values ({detail})") from e
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(path, "not a unetpipe checkpoint (no 'format' entry "
                               f"{FORMAT!r})")
    if int(ckpt.get("version", 0)) > VERSION:
        raise InputError(path, f"checkpoint layout version {ckpt.get('version')} is newer than "
                               f"this unetpipe understands ({VERSION}); upgrade unetpipe")
    return ckpt


def build_model(ckpt: dict, *, weights: str = "model"):
    """The U-Net of a checkpoint, with its weights, in eval mode.

    Parameters
    ----------
    ckpt : dict
        A loaded checkpoint.
    weights : {"model", "best"}
        ``"best"`` takes the best weights kept inside ``checkpoint_last.pt``.
    """
    from .model import UNet

    spec = ckpt["model"]
    if spec.get("class") != "UNet":
        raise ValueError(f"unknown model class {spec.get('class')!r}")
    model = UNet(**spec["config"])
    state = spec["state_dict"] if weights == "model" else ckpt["best"]["state_dict"]
    model.load_state_dict(state)
    return model.eval()
