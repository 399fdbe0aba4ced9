"""Open any model a user names: a ``.pt`` checkpoint, a bioimage.io package, or ``starter``."""

from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""The models shipped inside the package (``unetpipe/models``)."""

BUILTIN_MODELS: dict[str, str] = {
    "starter": "starter_2d.pt",
}
"""Name -> file in :data:`MODELS_DIR` of the models that come with unetpipe.

``starter`` is a 2D U-Net (depth 4, 16 features, batch norm, three classes)
trained on domain-randomised synthetic nuclei by
``benchmarks/starter_model.py``, with tuned segmentation settings; see
``unetpipe info starter``."""


def builtin_model(name: str) -> Path | None:
    """The file of a built-in model, or None when ``name`` is not one."""
    file = BUILTIN_MODELS.get(os.fspath(name)) if isinstance(name, str | os.PathLike) else None
    return None if file is None else MODELS_DIR / file


def named_model(value):
    """``value`` with a built-in model's name replaced by that model's file.

    A file of that name wins; anything else (a path, None, an unknown name)
    comes back as given, for the caller's own checks.

    Examples
    --------
    >>> named_model("starter").endswith("starter_2d.pt"), named_model("mine.pt"), named_model(None)
    (True, 'mine.pt', None)
    """
    if value is None or os.path.exists(os.fspath(value)):
        return value
    path = builtin_model(value)
    return value if path is None else os.fspath(path)


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """The path of a model given by path or by the name of a built-in model.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A checkpoint (``.pt``), a bioimage.io package (``.zip``, its
        ``rdf.yaml`` or unpacked folder), or a key of :data:`BUILTIN_MODELS`.
        An existing path wins over a name.

    Returns
    -------
    str

    Raises
    ------
    InputError
        Neither an existing path nor a built-in model's name (for a bare
        name, the message lists the built-in models), or a built-in model
        missing from this installation.

    Examples
    --------
    >>> resolve_model("starter").endswith("starter_2d.pt")
    True
    """
    from ..core.errors import InputError

    given = os.fspath(name_or_path)
    if os.path.exists(given):
        return given
    path = builtin_model(given)
    if path is not None:
        if not path.is_file():
            raise InputError(path, f"the built-in model {given!r} is missing from this "
                                   "installation of unetpipe; reinstall it")
        return os.fspath(path)
    if os.sep in given or "/" in given or os.path.splitext(given)[1]:
        raise InputError(given, "no such model file")  # a path, not a name
    raise InputError(given, f"no such model file, and not the name of a built-in model "
                            f"(built-in: {', '.join(sorted(BUILTIN_MODELS))}); give a "
                            "checkpoint (.pt) or a bioimage.io package (.zip) written by "
                            "unetpipe")


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a model in the checkpoint layout, whatever form it comes in.

    A ``.pt`` checkpoint is loaded with ``torch.load(..., weights_only=True)``
    (:func:`unetpipe.nn.checkpoint.read_checkpoint`). A bioimage.io model
    exported by unetpipe (a ``.zip`` package, its ``rdf.yaml`` /
    ``bioimageio.yaml``, or a folder holding one) is imported with
    :func:`unetpipe.nn.bioimageio.import_model` into the same layout. A name
    of :data:`BUILTIN_MODELS` (``starter``) opens that model, unless a file
    of that name exists.

    Raises
    ------
    InputError
        The file is missing, is not a unetpipe checkpoint or package, or holds
        pickled objects (which are never unpickled).
    """
    from .bioimageio import import_model, is_package
    from .checkpoint import read_checkpoint

    given = os.fspath(path)
    if not os.path.exists(given) and (builtin_model(given) is not None
                                      or not os.path.splitext(os.path.basename(given))[1]):
        path = resolve_model(given)  # a name: a built-in model, or the list of them
    if is_package(path):
        return import_model(path, map_location=map_location)
    return read_checkpoint(path, map_location=map_location)
