"""``unetpipe.weights``, the import path of the separation weight map that the
design pins. The functions live in :mod:`unetpipe.stages.weights`."""

from .stages.weights import *  # noqa: F403
from .stages.weights import __all__  # noqa: F401
