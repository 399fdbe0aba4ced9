"""``unetpipe.bioimageio``, the import path that exported bioimage.io packages
name for their architecture (``unetpipe.bioimageio:UNetProbabilities``). The
code lives in :mod:`unetpipe.nn.bioimageio`."""

from .nn.bioimageio import (  # noqa: F401
    ExportResult,
    UNetProbabilities,
    export_model,
    import_model,
    is_package,
)
