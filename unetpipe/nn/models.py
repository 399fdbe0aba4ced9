"""Open any model a user names: a ``.pt`` checkpoint or a bioimage.io package."""

from __future__ import annotations

import os


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a model in the checkpoint layout, whatever form it comes in.

    A ``.pt`` checkpoint is loaded with ``torch.load(..., weights_only=True)``
    (:func:`unetpipe.nn.checkpoint.read_checkpoint`). A bioimage.io model
    exported by unetpipe (a ``.zip`` package, its ``rdf.yaml`` /
    ``bioimageio.yaml``, or a folder holding one) is imported with
    :func:`unetpipe.nn.bioimageio.import_model` into the same layout.

    Raises
    ------
    InputError
        The file is missing, is not a unetpipe checkpoint or package, or holds
        pickled objects (which are never unpickled).
    """
    from .bioimageio import import_model, is_package
    from .checkpoint import read_checkpoint

    if is_package(path):
        return import_model(path, map_location=map_location)
    return read_checkpoint(path, map_location=map_location)
