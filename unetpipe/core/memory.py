"""Process memory: handing freed heap pages back to the system, or keeping large
buffers in the heap for reuse."""

from __future__ import annotations


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``).

    Each batch allocates and frees buffers of a few MiB (Zarr chunks,
    windows, output blocks) from several threads; glibc keeps such freed
    memory in per-thread heaps, fragmented, so the resident size creeps far
    above what is in use. Trimming after every batch costs about 3% of the
    time and cut the peak RSS of benchmarks/predict_memory.py by a quarter
    (a fixed mmap threshold cut it by half but slowed the network's
    forward pass by a fifth, whose buffers then came fresh from mmap).
    """
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


_GLIBC: dict = {}


def _glibc(name: str):
    """A function of glibc, or None where there is none (not Linux, not glibc)."""
    if name not in _GLIBC:
        import ctypes
        import sys

        _GLIBC[name] = None
        if sys.platform.startswith("linux"):
            try:
                _GLIBC[name] = getattr(ctypes.CDLL("libc.so.6"), name)
            except (OSError, AttributeError):
                pass
    return _GLIBC[name]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
LARGE_BUFFERS = 512 * 2**20


def reuse_large_buffers() -> bool:
    """Let the heap keep and reuse large freed buffers (glibc ``mallopt``), once per process.

    A network's activations are tens to hundreds of MiB each. glibc serves
    such requests with fresh ``mmap`` pages and returns them on ``free``, so
    every forward pass faults all of its memory in anew: a third of a pass's
    time for a 1216 x 1216 window on the CPU. With a mmap threshold of
    512 MiB the buffers come from the heap and the next pass reuses the same
    pages; one heap arena per process keeps the threads from each holding a
    copy. It costs some memory, as the heap now holds what it freed (on the
    demo's 2048 x 2048 image with the default network, two runs each: 13%
    and 30% faster, peak RSS 787 and 771 MB against 643 and 701 MB). The
    predict stage then no longer trims after each batch. Returns whether it
    applied (glibc only).
    """
    global _REUSE
    if _REUSE is None:
        mallopt = _glibc("mallopt")
        _REUSE = mallopt is not None and bool(
            mallopt(M_MMAP_THRESHOLD, LARGE_BUFFERS) and mallopt(M_TRIM_THRESHOLD, LARGE_BUFFERS)
            and mallopt(M_ARENA_MAX, 1))
    return _REUSE


_REUSE = None
