"""Errors that a user can act on.

The command line prints these as one line, without a traceback (unless
``--debug``), and exits non-zero. Anything else that escapes is a bug in
unetpipe and is shown with its traceback.
"""

from __future__ import annotations

import os


class UnetpipeError(Exception):
    """An error caused by input or configuration, not by unetpipe itself."""


class ConfigError(UnetpipeError):
    """A configuration value is missing, unknown or of the wrong kind."""


class InputError(UnetpipeError):
    """An input file cannot be used; the message names the file.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file.
    problem : str
        What is wrong with it, phrased to follow ``"{path}: "``.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # picklable, so that dask.distributed workers can send it back as it is
        return (type(self), (self.path, self.problem))
