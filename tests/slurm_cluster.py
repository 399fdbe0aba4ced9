"""A real single-node SLURM cluster on this machine, for the cluster tests.

:class:`SlurmCluster` starts munged, slurmctld and slurmd from Debian's
``slurm-wlm`` and ``munge`` packages with a minimal configuration written to
a temporary folder: its own munge key and socket, its own state, spool and
log folders, its own ports, no accounting (``accounting_storage/none``), no
cgroups (``proctrack/linuxproc``, ``task/none``), and one node with this
machine's real CPUs and memory (as ``slurmd -C`` reports them) in one
partition. Nothing under ``/etc`` is read or changed: the daemons and the
client commands (sbatch, squeue, scancel, ...) find the configuration
through the ``SLURM_CONF`` variable of :attr:`SlurmCluster.env`, whose
``PATH`` also starts with wrappers of the client commands that set it (for
tools that clear ``SLURM_*`` variables, as Snakemake's SLURM job step does).

``stop`` cancels every job, stops the daemons and then ends whatever the
cluster started that is still running (job steps and their processes carry
``SLURM_CONF`` pointing at this cluster), also when a test failed.

Run it by hand (as root) to try a workflow against it::

    python tests/slurm_cluster.py      # prints the environment, Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/mungekey", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
PARTITION = "debug"


def unavailable() -> str | None:
    """Why a local SLURM cluster cannot be started here, or None when it can."""
    missing = [p for p in DAEMONS if not os.access(p, os.X_OK)]
    missing += [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return ("SLURM or munge is not installed (missing " + ", ".join(missing)
                + "; Debian: apt-get install slurm-wlm munge, or run `make test` as root)")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs (run the cluster tests as root)"
    return None


def node_resources() -> dict:
    """This machine as SLURM sees it: ``slurmd -C`` (CPUs, sockets, cores,
    threads, RealMemory)."""
    out = subprocess.run(["/usr/sbin/slurmd", "-C"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    line = next(li for li in out.splitlines() if li.startswith("NodeName="))
    fields = dict(item.split("=", 1) for item in line.split())
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore",
            "RealMemory")
    return {k: fields[k] for k in keep if k in fields}


def _free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there, otherwise a free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


class SlurmCluster:
    """munged + slurmctld + slurmd on localhost, configured in ``root``.

    Parameters
    ----------
    root : path, optional
        Folder for the configuration, key, state and logs; default a new
        temporary folder (removed by :meth:`stop`). Unix socket paths are
        limited to 107 bytes, so keep it short.
    ctld_port, slurmd_port : int
        Ports of slurmctld and slurmd (others when these are taken).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, ctld_port: int = 16817,
                 slurmd_port: int = 16818):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="uslurm-"))
        self.ctld_port = _free_port(ctld_port)
        self.slurmd_port = _free_port(slurmd_port)
        self.node = socket.gethostname().split(".")[0]
        self.partition = PARTITION
        self.conf = self.root / "slurm.conf"
        self.resources = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self.bin = self.root / "bin"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")

    # --- set-up ----------------------------------------------------------------

    def _write_config(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o755)
        key = r / "munge" / "munge.key"
        subprocess.run(["/usr/sbin/mungekey", "--create", "--force", "--keyfile", str(key)],
                       check=True, capture_output=True, timeout=30)
        os.chmod(key, 0o600)
        # Client commands that find this cluster without SLURM_CONF: Snakemake's
        # SLURM job step drops every SLURM_* variable before its nested srun
        # (a real cluster's clients read /etc/slurm or ask slurmd)
        self.bin.mkdir(exist_ok=True)
        for name in CLIENTS:
            wrapper = self.bin / name
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec '
                               f'{shutil.which(name)} "$@"\n')
            wrapper.chmod(0o755)
        self.resources = node_resources()
        node = " ".join(f"{k}={v}" for k, v in self.resources.items())
        self.conf.write_text(f"""\
# A one-node test cluster (tests/slurm_cluster.py); not for production.
ClusterName=unetpipe-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, no usable cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# finished jobs stay visible to squeue (Snakemake's status command) for 10 minutes
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        try:
            self._procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                 env=self.env, start_new_session=True)
        finally:
            log.close()

    def start(self, timeout: float = 60) -> dict:
        """Start the daemons; return the environment for client commands once
        the node is idle."""
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        try:
            self._write_config()
            m = self.root / "munge"
            self._spawn("munged", ["/usr/sbin/munged", "--foreground", "--force",
                                   f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                                   f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                                   f"--seed-file={m}/munged.seed"])
            self._wait(lambda: (m / "munge.socket").exists(), 20, "munged")
            self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-c", "-i", "-f",
                                      str(self.conf)])
            self._wait(lambda: self._run("scontrol", "ping").returncode == 0
                       and "UP" in self._run("scontrol", "ping").stdout, 30, "slurmctld")
            self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-f", str(self.conf)])
            self._wait(self._node_idle, timeout, "slurmd (node idle)")
        except BaseException:
            self.stop()
            raise
        return self.env

    def _run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def _node_idle(self) -> bool:
        state = self._run("sinfo", "-h", "-N", "-o", "%T").stdout.split()
        if state and state[0].startswith(("drain", "down")):
            # ReturnToService=2 brings a node back once slurmd registers; a
            # node drained by an earlier failed start is resumed here
            self._run("scontrol", "update", f"NodeName={self.node}", "State=RESUME")
        return bool(state) and state[0] == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while starting "
                                       f"{what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"the local SLURM did not come up ({what}) in {timeout:.0f} s:\n"
                           f"{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        """The last lines of every daemon log (for error messages)."""
        out = []
        for path in [*sorted((self.root / "log").glob("*")), self.root / "munge/munged.log"]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # --- use ---------------------------------------------------------------------

    def jobs(self) -> list[dict]:
        """Jobs squeue knows (running, pending and finished within MinJobAge)."""
        out = self._run("squeue", "-h", "-a", "-t", "all", "-o", "%i|%j|%T|%k").stdout
        rows = []
        for line in out.splitlines():
            job_id, name, state, comment = line.split("|", 3)
            rows.append({"id": job_id, "name": name, "state": state, "comment": comment})
        return rows

    def sbatch(self, script: str, *args: str, cwd: str | os.PathLike | None = None) -> str:
        """Submit a batch script; return its job id."""
        proc = subprocess.run(["sbatch", "--parsable", *args], input=script,
                              capture_output=True, text=True, env=self.env, cwd=cwd,
                              timeout=30)
        if proc.returncode:
            raise RuntimeError(f"sbatch failed: {proc.stderr}")
        return proc.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict:
        """``scontrol show job``'s fields (finished jobs too, for MinJobAge)."""
        out = self._run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def job_state(self, job_id: str) -> str:
        out = self._run("scontrol", "show", "job", job_id).stdout
        match = re.search(r"JobState=(\S+)", out)
        return match.group(1) if match else "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float = 300) -> str:
        """Wait until a job has ended; return its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"):
                return state
            time.sleep(0.5)
        raise TimeoutError(f"SLURM job {job_id} still {state} after {timeout:.0f} s")

    # --- tear-down ---------------------------------------------------------------

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, end what is left of the jobs,
        remove a temporary root."""
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self._run("scancel", "--full", "--user", "root", "--quiet")
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and any(
                        j["state"] in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")
                        for j in self.jobs()):
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._kill_leftovers()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """End processes of this cluster still running (slurmstepd and job
        processes): those whose environment points SLURM_CONF at this
        cluster, or whose PATH starts with its client wrappers (job steps
        without SLURM_* variables), except this process and its ancestors."""
        mine = f"SLURM_CONF={self.conf}".encode()
        path = f"PATH={self.bin}{os.pathsep}".encode()
        spare = set()
        pid = os.getpid()
        while pid > 1:
            spare.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        for _ in range(3):
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in spare:
                    continue
                try:
                    env = (entry / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if mine in env or any(e.startswith(path) for e in env):
                    found.append(int(entry.name))
            if not found:
                return
            for pid in found:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with SlurmCluster() as cluster:
        print(f"export SLURM_CONF={cluster.conf}")
        print(subprocess.run(["sinfo"], env=cluster.env, capture_output=True,
                             text=True).stdout)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
