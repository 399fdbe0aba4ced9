"""Where the network runs: CUDA, then MPS, then the CPU.

One place for training, prediction and the Dask workers of a cluster, which
pick their own device.
"""

from __future__ import annotations

from .errors import ConfigError


def select_device(name: str = "auto", *, key: str = "train.device"):
    """The device to run on: CUDA, then MPS, then CPU for ``"auto"``.

    ``key`` is the config key named when the device asked for is missing.

    Raises
    ------
    ConfigError
        A device was asked for that this machine does not have.
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key '{key}': cuda, but torch sees no CUDA device "
                          f"(torch {torch.__version__}; a CPU-only build?)")
    if name == "mps" and not has_mps:
        raise ConfigError(f"config key '{key}': mps, but MPS is not available here")
    return torch.device(name)


def worker_device(name: str, key: str) -> str:
    """The device a Dask worker resolves ``name`` to (run on the worker)."""
    return str(select_device(name, key=key))
