"""Progress bars that go where the user looks.

On a terminal they go to standard error. Under Snakemake the command line is
given ``--log FILE`` and they go to that file, so parallel jobs do not draw
over each other in Snakemake's own output.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import IO

_stream: IO[str] | None = None
_cancelled: Callable[[], bool] | None = None


class Cancelled(Exception):
    """A run stopped by the check given to :func:`set_cancel`."""


def set_stream(stream: IO[str] | None) -> None:
    """Send progress bars to ``stream`` (None: standard error)."""
    global _stream
    _stream = stream


def get_stream() -> IO[str] | None:
    """The stream given to :func:`set_stream` (None: standard error)."""
    return _stream


def stream() -> IO[str]:
    return _stream if _stream is not None else sys.stderr


def set_cancel(check: Callable[[], bool] | None) -> None:
    """Make every progress bar's ``update`` raise :class:`Cancelled` once
    ``check()`` is true (None: never).

    The check runs before tqdm takes its lock. An exception raised while
    tqdm holds it (from a stream's ``write``, say) would leave tqdm's
    process-wide lock taken, and every later bar would wait for it forever.
    """
    global _cancelled
    _cancelled = check


@functools.cache
def _bar_class():
    from tqdm import tqdm

    class Bar(tqdm):
        def update(self, n=1):
            if _cancelled is not None and _cancelled():
                raise Cancelled("cancelled")
            return super().update(n)

    return Bar


def enabled() -> bool:
    """Draw bars into a log file given with ``--log``, or on a terminal; nowhere else."""
    if _stream is not None:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable=None, **kwargs):
    """A tqdm progress bar on the current stream (see :func:`set_cancel`)."""
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs["disable"] = kwargs.get("disable", False) or not enabled()
    return _bar_class()(iterable, file=stream(), **kwargs)


def compute_threaded(func, arguments, *, workers: int, pbar, count):
    """Run ``func(*args)`` for every tuple in ``arguments`` as Dask tasks on the
    threaded scheduler, advancing ``pbar`` by ``count(result)`` as each ends.

    Returns the results, in the order of ``arguments``.
    """
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in keys:
                pbar.update(count(result))

    tasks = [dask.delayed(func, pure=False)(*args) for args in arguments]
    keys = {t.key for t in tasks}
    with _Progress():
        return dask.compute(*tasks, scheduler="threads", num_workers=workers)
