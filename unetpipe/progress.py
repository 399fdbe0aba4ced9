"""Progress bars that go where the user looks.

On a terminal they go to standard error. Under Snakemake the command line is
given ``--log FILE`` and they go to that file, so parallel jobs do not draw
over each other in Snakemake's own output.
"""

from __future__ import annotations

import sys
from typing import IO

_stream: IO[str] | None = None


def set_stream(stream: IO[str] | None) -> None:
    """Send progress bars to ``stream`` (None: standard error)."""
    global _stream
    _stream = stream


def stream() -> IO[str]:
    return _stream if _stream is not None else sys.stderr


def enabled() -> bool:
    """Draw bars into a log file given with ``--log``, or on a terminal; nowhere else."""
    if _stream is not None:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable=None, **kwargs):
    """A tqdm progress bar on the current stream."""
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs["disable"] = kwargs.get("disable", False) or not enabled()
    return tqdm(iterable, file=stream(), **kwargs)


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
