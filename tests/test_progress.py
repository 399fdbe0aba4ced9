"""Progress bars: where they go, and cancelling through them."""

import io
import threading

import pytest

from unetpipe.core import progress


def _tqdm_lock_is_free(seconds=10.0):
    """Whether a new bar, in another thread, gets tqdm's process-wide lock."""
    t = threading.Thread(target=lambda: progress.bar(total=1).close(), daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


@pytest.fixture
def to_a_buffer():
    out = io.StringIO()
    progress.set_stream(out)
    yield out
    progress.set_cancel(None)
    progress.set_stream(None)


def test_bars_draw_on_the_stream_given(to_a_buffer):
    assert progress.get_stream() is to_a_buffer
    with progress.bar(total=4, desc="blocks", mininterval=0) as b:
        b.update(4)
    assert "blocks: 100%" in to_a_buffer.getvalue() and "4/4" in to_a_buffer.getvalue()


def test_cancel_raises_from_update_and_leaves_tqdm_usable(to_a_buffer):
    stop = threading.Event()
    progress.set_cancel(stop.is_set)
    with progress.bar(total=3, desc="blocks") as b:
        b.update()
        stop.set()
        with pytest.raises(progress.Cancelled):
            b.update()
        assert b.n == 1
    # also a disabled bar (a stage run with progress off) stops
    with pytest.raises(progress.Cancelled):
        progress.bar(total=3, disable=True).update()
    progress.set_cancel(None)
    assert _tqdm_lock_is_free()


def test_cancel_stops_the_threaded_runner(to_a_buffer):
    done = []
    progress.set_cancel(lambda: len(done) >= 2)

    def task(i):
        done.append(i)
        return 1

    with progress.bar(total=50) as b, pytest.raises(progress.Cancelled):
        progress.compute_threaded(task, [(i,) for i in range(50)], workers=1, pbar=b,
                                  count=lambda r: r)
    assert len(done) < 50
    progress.set_cancel(None)
    assert _tqdm_lock_is_free()
