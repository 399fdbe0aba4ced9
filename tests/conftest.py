"""Fixtures shared by the test modules."""

import os
import tempfile

import pytest

# napari's settings (reader preferences among them) in a folder of the session's
# own, never the user's: set before napari reads where they are
os.environ["NAPARI_CONFIG"] = os.path.join(tempfile.mkdtemp(prefix="unetpipe-napari-"),
                                           "settings.yaml")


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread.

    The networks in the tests are tiny: many short operations. With several
    threads on a busy machine each one can wait for a descheduled thread,
    which makes the tests ten times slower and erratic.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM cluster on this machine (tests/slurm_cluster.py),
    started once per session and stopped (jobs cancelled, daemons ended)
    afterwards, also when a test failed.

    Skipped where SLURM or munge is missing or the tests do not run as root;
    under ``CI=true`` that is a failure instead: CI installs them (``make test``).
    """
    import os

    from slurm_cluster import SlurmCluster, unavailable

    reason = unavailable()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true, but the local SLURM test cluster cannot start: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
