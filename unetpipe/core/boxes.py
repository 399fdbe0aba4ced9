"""Boxes (tuples of slices, one per axis) as chunked stages and review use them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def chunk_indices(box: Sequence[slice], chunks: Sequence[int]) -> list[tuple[int, ...]]:
    """Indices of the chunks of a grid of ``chunks`` that ``box`` overlaps.

    Examples
    --------
    >>> chunk_indices((slice(3, 5), slice(0, 2)), (4, 4))
    [(0, 0), (1, 0)]
    """
    ranges = [range(s.start // c, math.ceil(s.stop / c)) for s, c in zip(box, chunks, strict=True)]
    return [tuple(int(v) for v in idx) for idx in itertools.product(*ranges)]


def intersect(a: Sequence[slice], b: Sequence[slice]) -> tuple[slice, ...] | None:
    """The overlap of two boxes, or None when they do not overlap.

    Examples
    --------
    >>> intersect((slice(0, 4),), (slice(2, 8),))
    (slice(2, 4, None),)
    """
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop))
                for x, y in zip(a, b, strict=True))
    return out if all(s.start < s.stop for s in out) else None


def shift(box: Sequence[slice], within: Sequence[slice]) -> tuple[slice, ...]:
    """``box`` in the coordinates of the box ``within`` (whose start becomes 0).

    Examples
    --------
    >>> shift((slice(5, 7),), (slice(4, 10),))
    (slice(1, 3, None),)
    """
    return tuple(slice(s.start - o.start, s.stop - o.start)
                 for s, o in zip(box, within, strict=True))


def box_text(box: Sequence[Sequence[int]]) -> str:
    """A box given as ``(start, stop)`` per axis, written as a Python slice.

    Examples
    --------
    >>> box_text([(0, 200), (240, 300)])
    '[0:200, 240:300]'
    """
    return "[" + ", ".join(f"{int(a)}:{int(b)}" for a, b in box) + "]"
