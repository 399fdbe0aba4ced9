"""Where the block tasks of predict and segment run: Dask's threaded
scheduler, a dask.distributed cluster, or a Dask cluster of SLURM jobs.

``scheduler``
    ``threads``: Dask's threaded scheduler in this process (the default).
    ``distributed``: the dask.distributed scheduler at ``address``, or a
    local cluster of ``processes`` worker processes.
    ``slurm``: a dask-jobqueue ``SLURMCluster`` started from this process:
    the ``dask_slurm`` config section says how many worker jobs, their
    cores, memory, walltime, partition and so on. This process (one
    Snakemake job, or a command on a login node) runs the scheduler and
    drives the blocks; the workers read and write the stores on the shared
    file system, so the output and its resume records are the same as with
    any other scheduler.

Every block is recorded when its data are written, so a worker job killed
at its walltime loses only the blocks it was writing: Dask gives its tasks
to the other workers, and a rerun of the whole command does only the blocks
without a record. Workers retire a few minutes before their walltime
(``--lifetime``) and adaptive scaling submits a replacement job, so long
runs are not cut short.

The cluster packages (``distributed``, ``dask-jobqueue``) are imported only
when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

log = logging.getLogger("unetpipe")

SCHEDULERS = ("threads", "distributed", "slurm")

def check_scheduler(scheduler: str, *, stage: str) -> None:
    """Raise ConfigError naming ``STAGE.scheduler`` when the scheduler is not
    known or its packages are missing."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"config key '{stage}.scheduler': {scheduler!r} is not one of "
                          f"{', '.join(SCHEDULERS)}")
    needs = {"distributed": ("distributed",), "slurm": ("distributed", "dask_jobqueue")}
    for module in needs.get(scheduler, ()):
        try:
            __import__(module)
        except ImportError as e:
            raise ConfigError(f"config key '{stage}.scheduler': {scheduler} needs the "
                              f"{module.replace('_', '-')} package (pip install "
                              "'unetpipe[cluster]')") from e


@dataclass(frozen=True)
class Execution:
    """How a chunked stage (predict, segment) runs: where its blocks go, what it
    does with earlier work, whether it draws a progress bar.

    Parameters
    ----------
    threads : int, optional
        CPU cores to use; default all.
    workers : int, optional
        Dask threads per process, each running a batch of blocks (predict);
        default 2, 1 on one core.
    scheduler : {"threads", "distributed", "slurm"}
        Dask's threaded scheduler; a ``dask.distributed`` cluster (the one at
        ``address``, or a local one of ``processes`` worker processes); or a
        dask-jobqueue ``SLURMCluster`` of worker jobs set by ``dask_slurm``.
    address : str, optional
        A running ``dask.distributed`` scheduler, for ``"distributed"``.
    processes : int, optional
        Worker processes of a local ``dask.distributed`` cluster; default 2.
    dask_slurm : mapping, optional
        The ``dask_slurm`` config section, for ``"slurm"``; missing keys take
        the schema's defaults.
    resume : bool
        Continue a partial output made with the same input and settings,
        doing only the blocks it lacks.
    progress : bool
        Draw a progress bar. Listeners (:func:`unetpipe.core.progress.listening`)
        are told either way.

    Examples
    --------
    >>> Execution(threads=2).check("predict").cores
    2
    """

    threads: int | None = None
    workers: int | None = None
    scheduler: str = "threads"
    address: str | None = None
    processes: int | None = None
    dask_slurm: Mapping | None = None
    resume: bool = True
    progress: bool = True

    def check(self, stage: str) -> Execution:
        """Raise ConfigError naming ``STAGE.KEY`` of a bad value, or of a
        scheduler whose packages are missing."""
        for key in ("threads", "workers", "processes"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"config key '{stage}.{key}': {value!r} must be a whole "
                                  "number of at least 1")
        check_scheduler(self.scheduler, stage=stage)
        if self.scheduler == "slurm":
            dask_slurm_settings(self.dask_slurm)
        return self

    @property
    def cores(self) -> int:
        """The CPU cores the stage may use (``threads``, else all)."""
        return self.threads or os.cpu_count() or 1

    @property
    def slurm(self) -> dict | None:
        """The ``dask_slurm`` settings with defaults, for ``scheduler="slurm"``."""
        return dask_slurm_settings(self.dask_slurm) if self.scheduler == "slurm" else None

    @property
    def local_cluster(self) -> bool:
        """Whether a ``dask.distributed`` cluster is started on this machine."""
        return self.scheduler == "distributed" and not self.address

    def client(self, *, threads_per_process: int | None):
        """:func:`dask_client` for these settings (None for ``"threads"``)."""
        return dask_client(self.scheduler, address=self.address, processes=self.processes,
                           threads_per_process=threads_per_process, dask_slurm=self.slurm)


def dask_slurm_settings(settings: Mapping | None) -> dict:
    """The ``dask_slurm`` settings with the defaults filled in; unknown keys
    raise ConfigError."""
    from .config import defaults

    # the schema's defaults, for callers of the library functions that pass
    # only some of the keys
    default = defaults()["dask_slurm"]
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(default))
    if unknown:
        raise ConfigError(f"config key 'dask_slurm.{unknown[0]}' is not known; known keys: "
                          f"{', '.join(default)}")
    return {**default, **settings}


def walltime_seconds(walltime: str) -> int:
    """Seconds of a SLURM time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM`` or ``D-HH:MM:SS``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(walltime).strip())
    if not m:
        raise ConfigError(f"config key 'dask_slurm.walltime': {walltime!r} is not a SLURM "
                          "time limit such as 04:00:00 or 1-00:00:00")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:  # HH:MM:SS
        return int(a) * 3600 + int(b) * 60 + int(c)
    return int(a) * 60 + int(b or 0)  # MM[:SS]


def slurm_cluster(settings: Mapping | None, *, threads_per_process: int | None = None):
    """A dask-jobqueue ``SLURMCluster`` from the ``dask_slurm`` settings, scaled
    adaptively to exactly ``jobs`` worker jobs (a job that ends is replaced).

    Parameters
    ----------
    settings : mapping
        The ``dask_slurm`` config section.
    threads_per_process : int, optional
        Dask threads per worker process; default all the job's cores shared
        out among its processes. The job books ``cores`` CPUs either way.
    """
    from dask_jobqueue import SLURMCluster

    s = dask_slurm_settings(settings)
    processes = int(s["processes_per_job"])
    cores = int(s["cores"])
    if processes > cores:
        raise ConfigError(f"config key 'dask_slurm.processes_per_job': {processes} worker "
                          f"processes need at least as many cores (dask_slurm.cores is {cores})")
    nthreads = threads_per_process or max(1, cores // processes)
    seconds = walltime_seconds(s["walltime"])
    # retire before SLURM kills the job, so its tasks move to other workers
    # in an orderly way and adaptive scaling asks for a replacement job
    worker_args = []
    if seconds >= 15 * 60:
        worker_args = ["--lifetime", f"{seconds - 5 * 60}s", "--lifetime-stagger", "120s"]
    cluster = SLURMCluster(
        cores=nthreads * processes, processes=processes, job_cpu=cores, memory=s["memory"],
        walltime=s["walltime"], queue=s["queue"], account=s["account"],
        job_extra_directives=list(s["job_extra_directives"]),
        job_script_prologue=list(s["job_script_prologue"]),
        local_directory=s["local_directory"], python=s["python"] or sys.executable,
        interface=s["interface"], worker_extra_args=worker_args,
        scheduler_options={"dashboard": False},
        job_name="unetpipe-dask",
    )
    jobs = int(s["jobs"])
    cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
    log.info("dask_slurm: %d worker job(s) of %d core(s), %s, %s, %d process(es) x %d "
             "thread(s)%s; scheduler at %s", jobs, cores, s["memory"], s["walltime"], processes,
             nthreads, f", partition {s['queue']}" if s["queue"] else "",
             cluster.scheduler_address)
    log.debug("dask_slurm job script:\n%s", cluster.job_script())
    return cluster


@contextlib.contextmanager
def dask_client(scheduler: str, *, address: str | None = None, processes: int | None = None,
                threads_per_process: int | None = 1, dask_slurm: Mapping | None = None
                ) -> Iterator[Any]:
    """A dask.distributed client for ``scheduler`` (None for ``threads``);
    a cluster started here is closed (its SLURM jobs cancelled) on leaving."""
    if scheduler == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if scheduler == "slurm":
            cluster = slurm_cluster(dask_slurm, threads_per_process=threads_per_process)
            client = Client(cluster)
        elif address:
            client = Client(address)
        else:
            cluster = LocalCluster(n_workers=processes or 2,
                                   threads_per_worker=threads_per_process, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def run_tasks(func: Callable, arguments: Sequence[tuple], *, client=None, workers: int = 1,
              pbar=None, count: Callable = lambda r: 0) -> list:
    """``func(*args)`` for every tuple in ``arguments``: as Dask tasks on the
    threaded scheduler (``client`` None, ``workers`` threads), or on the
    client's cluster. ``pbar`` advances by ``count(result)`` as each ends.

    Returns the results in the order of ``arguments``.
    """
    if client is None:
        from .progress import compute_threaded

        return list(compute_threaded(func, arguments, workers=workers, pbar=pbar, count=count))
    from distributed import as_completed

    if not arguments:
        return []
    futures = client.map(func, *zip(*arguments, strict=True), pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    for future in as_completed(futures):
        result = future.result()
        results[index[future.key]] = result
        if pbar is not None:
            pbar.update(count(result))
    return results


