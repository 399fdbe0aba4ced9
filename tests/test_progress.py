"""Progress: where the bars go, what listeners are told, and cancelling through them."""

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
    progress.set_stream(None)


def _stop_when(check):
    """A listener that cancels once ``check()`` is true."""
    def listen(stage, done, total):
        if check():
            raise progress.Cancelled("cancelled")
    return listen


def test_bars_draw_on_the_stream_given(to_a_buffer):
    assert progress.get_stream() is to_a_buffer
    with progress.bar(total=4, desc="blocks", mininterval=0) as b:
        b.update(4)
    assert "blocks: 100%" in to_a_buffer.getvalue() and "4/4" in to_a_buffer.getvalue()


def test_listeners_are_told_stage_done_and_total(to_a_buffer):
    seen = []
    with progress.listening(lambda *e: seen.append(e)):
        with progress.bar(total=3, initial=1, desc="predict") as b:
            b.update(2)
        # a step without a terminal bar is told all the same
        for _ in progress.bar(["a", "b"], desc="demo", disable=True):
            pass
    assert seen == [("predict", 1, 3), ("predict", 3, 3), ("demo", 0, 2), ("demo", 1, 2),
                    ("demo", 2, 2)]
    # after the block, and in other threads, nobody listens
    with progress.bar(total=1, desc="later") as b:
        b.update()
    other = []
    with progress.listening(lambda *e: other.append(e)):
        t = threading.Thread(target=lambda: progress.bar(total=1, desc="elsewhere").update())
        t.start()
        t.join()
    assert len(seen) == 5 and other == []


def test_cancel_raises_from_update_and_leaves_tqdm_usable(to_a_buffer):
    stop = threading.Event()
    with progress.listening(_stop_when(stop.is_set)):
        with progress.bar(total=3, desc="blocks") as b:
            b.update()
            stop.set()
            with pytest.raises(progress.Cancelled):
                b.update()
            assert b.done == 2  # counted, then stopped
        # also a step with no terminal bar (a stage run with progress off) stops
        with pytest.raises(progress.Cancelled):
            progress.bar(total=3, disable=True).update()
    assert _tqdm_lock_is_free()


def test_cancel_stops_the_threaded_runner(to_a_buffer):
    done = []

    def task(i):
        done.append(i)
        return 1

    with progress.listening(_stop_when(lambda: len(done) >= 2)):
        with progress.bar(total=50) as b, pytest.raises(progress.Cancelled):
            progress.compute_threaded(task, [(i,) for i in range(50)], workers=1, pbar=b,
                                      count=lambda r: r)
    assert len(done) < 50
    assert _tqdm_lock_is_free()
