"""Progress of the stages, told to whoever listens.

A stage reports its steps through :func:`bar` (a :class:`Progress`): every
update is told to the listeners as ``(stage, done, total)``. Two kinds
listen:

- the terminal bar (tqdm), drawn where the user looks: on a terminal, on
  standard error; under Snakemake the command line is given ``--log FILE``
  and the bars go to that file (:func:`set_stream`), so parallel jobs do not
  draw over each other in Snakemake's own output;
- any callable registered with :func:`listening` (the napari widgets), for
  the stages started in that thread. A listener may raise
  :class:`Cancelled` to stop the stage at that update.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO

Listener = Callable[[str, int, int], None]
"""``listener(stage, done, total)``; ``total`` is 0 when unknown."""

_stream: IO[str] | None = None
_local = threading.local()


class Cancelled(Exception):
    """A run stopped by a listener (see :func:`listening`)."""


def set_stream(stream: IO[str] | None) -> None:
    """Draw progress bars on ``stream`` (None: standard error)."""
    global _stream
    _stream = stream


def get_stream() -> IO[str] | None:
    """The stream given to :func:`set_stream` (None: standard error)."""
    return _stream


def stream() -> IO[str]:
    return _stream if _stream is not None else sys.stderr


def enabled() -> bool:
    """Draw bars into a log file given with ``--log``, or on a terminal; nowhere else."""
    if _stream is not None:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _listeners() -> list[Listener]:
    if not hasattr(_local, "listeners"):
        _local.listeners = []
    return _local.listeners


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Tell ``listener(stage, done, total)`` the progress of every stage step
    started in this thread while the block runs.

    The listener is called after each update, from the thread that runs the
    stage's loop, outside any lock of tqdm's: it may raise :class:`Cancelled`
    to stop the stage there.
    """
    listeners = _listeners()
    listeners.append(listener)
    try:
        yield
    finally:
        listeners.remove(listener)


class Progress:
    """One stage step's progress: ``done`` of ``total``, told to every listener.

    Use :func:`bar` to make one. It works as a context manager and, given an
    iterable, as an iterator over it (one step per item).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
                 leave: bool = True, mininterval: float = 1.0):
        if total is None and iterable is not None:
            total = len(iterable) if hasattr(iterable, "__len__") else None
        self.stage, self.total, self.done = desc or "", total, int(initial)
        self._iterable = iterable
        self._listeners = list(_listeners())
        self._tqdm = None
        if not disable and enabled():
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                              leave=leave, mininterval=mininterval, dynamic_ncols=True,
                              file=stream())
        try:
            self._tell()
        except BaseException:
            self.close()
            raise

    def _tell(self) -> None:
        for listener in self._listeners:
            listener(self.stage, self.done, self.total or 0)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps done, and tell the listeners."""
        if not n:
            return
        self.done += int(n)
        if self._tqdm is not None:
            self._tqdm.update(n)  # returns with tqdm's lock released
        self._tell()

    def set_postfix(self, **values) -> None:
        """Figures shown after the terminal bar (training's loss, say)."""
        if self._tqdm is not None:
            self._tqdm.set_postfix(**values)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()


def bar(iterable: Iterable | None = None, **kwargs) -> Progress:
    """Report a stage step's progress; see :class:`Progress` for the options
    (``total``, ``initial``, ``desc`` (the stage's name), ``unit``,
    ``disable`` (no terminal bar; listeners are told either way), ``leave``).

    Examples
    --------
    >>> seen = []
    >>> with listening(lambda *e: seen.append(e)):
    ...     with bar(total=2, desc="blocks", disable=True) as b:
    ...         b.update(2)
    >>> seen
    [('blocks', 0, 2), ('blocks', 2, 2)]
    """
    return Progress(iterable, **kwargs)


def compute_threaded(func, arguments, *, workers: int, pbar, count):
    """Run ``func(*args)`` for every tuple in ``arguments`` as Dask tasks on the
    threaded scheduler, advancing ``pbar`` by ``count(result)`` as each ends.

    Returns the results, in the order of ``arguments``.
    """
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in keys and pbar is not None:
                pbar.update(count(result))

    tasks = [dask.delayed(func, pure=False)(*args) for args in arguments]
    keys = {t.key for t in tasks}
    with _Progress():
        return dask.compute(*tasks, scheduler="threads", num_workers=workers)
