"""Checkpoints: self-describing, and safe to load.

A checkpoint is a dict of tensors and plain Python values only (numbers,
strings, lists, dicts, None), so it loads with ``torch.load(...,
weights_only=True)``, which refuses any pickled object. It describes itself:

``format``, ``version``
    ``"unetpipe-checkpoint"`` and the layout version.
``model``
    ``{"class": "UNet", "config": constructor arguments, "state_dict": ...}``;
    float16 weights (a smaller file) are read back as float32.
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
import warnings

from ..core.errors import InputError

FORMAT = "unetpipe-checkpoint"
VERSION = 1
SEGMENT_PARAMS = "segment_params"
EFFECTIVE_HALO = "effective_halo"
"""Checkpoint key of the model's measured halo (:func:`unetpipe.nn.tiles.effective_halo`)."""
"""The checkpoint entry holding the segmentation settings the tune stage chose
(``unetpipe.stages.tune``); predict copies it into its probability stores."""


def plain(value, *, json: bool = False):
    """Tuples to lists, numpy scalars to Python: what a weights-only checkpoint holds.

    With ``json``, JSON values only: tensors are dropped, non-finite floats
    become None and anything else unknown becomes its string.

    Examples
    --------
    >>> plain({"a": (1, 2)})
    {'a': [1, 2]}
    >>> plain([float("nan"), 1.5], json=True)
    [None, 1.5]
    """
    import math

    import numpy as np

    if json:
        import torch

        if isinstance(value, dict):
            return {str(k): plain(v, json=True) for k, v in value.items()
                    if not isinstance(v, torch.Tensor)}
        if isinstance(value, list | tuple):
            return [plain(v, json=True) for v in value if not isinstance(v, torch.Tensor)]
    elif isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    elif isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if not json:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    import torch

    from ..io.images import atomic_output

    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a ``.pt`` checkpoint with ``weights_only=True``.

    :func:`unetpipe.nn.models.load_checkpoint` also opens bioimage.io
    packages; use it wherever a user gives a model.

    Raises
    ------
    InputError
        The file is missing, is not a unetpipe checkpoint, or holds pickled
        objects (which are never unpickled).
    """
    import pickle

    path = os.fspath(path)
    import torch

    if not os.path.isfile(path):
        raise InputError(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: not for users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the offending object in its "Unsupported global" line; anything
        # else (random bytes, a text file) is not a checkpoint at all
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        if not lines:
            raise InputError(path, "not a readable PyTorch checkpoint (the file is not in "
                                   "torch.save's format)") from e
        detail = lines[0].split(" was not", 1)[0].replace("WeightsUnpickler error: ", "")
        raise InputError(path, "refusing to load: the checkpoint holds objects other than "
                               f"tensors and plain values ({detail})") from e
    except (KeyError, IndexError, TypeError, ValueError) as e:
        # torch's legacy unpickler, lost in bytes that are no pickle (a text file, say)
        raise InputError(path, "not a readable PyTorch checkpoint (the file is not in "
                               "torch.save's format)") from e
    except (RuntimeError, EOFError) as e:  # a damaged file: torch says what is wrong
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(path, "not a unetpipe checkpoint (no 'format' entry "
                               f"{FORMAT!r})")
    if int(ckpt.get("version", 0)) > VERSION:
        raise InputError(path, f"checkpoint layout version {ckpt.get('version')} is newer than "
                               f"this unetpipe understands ({VERSION}); upgrade unetpipe")
    model = ckpt.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("config"), dict)
            and isinstance(model.get("state_dict"), dict)):
        raise InputError(path, "not a usable unetpipe checkpoint: its 'model' entry (class, "
                               "config, state_dict) is missing or incomplete")
    # weights stored as float16 to save space (the shipped starter model) are
    # trained and run as float32
    state = model["state_dict"]
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
            state[key] = value.float()
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
