"""Peak memory of preprocessing a 3D stack larger than 2 GB.

Writes a multi-page uint16 BigTIFF of the given shape (default 272 x 2048 x
2048, 2.3 GB), runs ``unetpipe preprocess`` on it as a separate process with
the default settings, and prints the stack's size on disk, the run's peak
resident memory (RSS, as the kernel records it for the child process) and,
measured in the same run as baselines:

* the peak RSS of a process that only imports the same libraries, and
* the naive approach a user might script instead: read the whole stack with
  tifffile, take exact percentiles, normalise in memory and write the same
  chunked Zarr (no pyramid). It needs about 5.5 times the stack's size in
  memory, so it is run only when that much is available; its peak RSS and
  time are the baseline for unetpipe's ratios.

Usage::

    python benchmarks/preprocess_memory.py [--shape Z Y X] [--threads 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_stack(path: str, shape: tuple[int, int, int]) -> None:
    """A realistic-enough stack: smooth structure plus noise, written plane by plane."""
    import tifffile

    rng = np.random.default_rng(0)
    _, ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    base = (200 + 150 * np.sin(yy / 97.0) * np.cos(xx / 61.0)).astype(np.float32)
    noise = rng.normal(0, 30, size=(ny, nx)).astype(np.float32)

    def planes():
        for z in range(shape[0]):
            shift = (z * 37) % ny
            plane = base * (1 + 0.002 * z) + np.roll(noise, shift, axis=0)
            yield np.clip(plane, 0, 65535).astype(np.uint16)

    tifffile.imwrite(path, planes(), shape=shape, dtype=np.uint16, bigtiff=True,
                     metadata={"axes": "ZYX"})


NAIVE = """
import sys
import numpy as np, tifffile, zarr
stack, out = sys.argv[1:]
a = tifffile.imread(stack)
lo, hi = np.percentile(a, [1.0, 99.8])
f = a.astype(np.float32)
del a
f -= np.float32(lo)
f *= np.float32(1.0 / (hi - lo))
z = zarr.create_array(out, shape=(1,) + f.shape, chunks=(1, 64, 256, 256), dtype="f4")
z[0] = f
"""


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def child_peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` as the only child started since the last call; return (peak RSS MB, seconds).

    ``RUSAGE_CHILDREN`` holds the largest peak of all waited-for children, so
    each measurement runs in a fresh helper process of its own.
    """
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:])\n"
        "dt = time.perf_counter() - t\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, dt, p.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         check=True)
    rss, seconds, code = out.stdout.split()[-3:]
    if int(code) != 0:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{out.stderr}")
    return float(rss), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[272, 2048, 2048],
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None,
                        help="Where to write the stack and the output (default: a temp folder).")
    parser.add_argument("--keep", action="store_true", help="Keep the files.")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="unetpipe-bench-", dir=args.workdir)
    try:
        stack = os.path.join(work, "stack.tif")
        out = os.path.join(work, "stack.ome.zarr")
        t = time.perf_counter()
        write_stack(stack, tuple(args.shape))
        size = os.path.getsize(stack)
        print(f"stack: {' x '.join(map(str, args.shape))} uint16, {size / 1e9:.2f} GB on disk "
              f"(written in {time.perf_counter() - t:.0f} s)")

        base_rss, _ = child_peak_rss_mb(
            [sys.executable, "-c",
             "import dask.array, zarr, tifffile, numpy, unetpipe.preprocess, unetpipe.cli"])
        rss, seconds = child_peak_rss_mb(
            [sys.executable, "-m", "unetpipe", "--quiet", "--log", os.path.join(work, "log"),
             "preprocess", stack, out, "--threads", str(args.threads)])
        out_bytes = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, files in os.walk(out) for f in files)
        print(f"output: {out_bytes / 1e9:.2f} GB (float32 OME-Zarr with pyramid)")
        print(f"peak RSS of `unetpipe preprocess`: {rss:.0f} MB "
              f"({rss / (size / 2**20):.2f} x the stack's size)")
        print(f"baseline, importing the same libraries: {base_rss:.0f} MB peak RSS; "
              f"above it: {rss - base_rss:.0f} MB")
        print(f"time: {seconds:.1f} s")
        available = _available_bytes()
        if available > 5.5 * size:
            naive_out = os.path.join(work, "naive.zarr")
            naive_rss, naive_s = child_peak_rss_mb([sys.executable, "-c", NAIVE, stack, naive_out])
            print(f"baseline, naive whole-stack preprocessing: {naive_rss:.0f} MB peak RSS "
                  f"({naive_rss / (size / 2**20):.2f} x the stack), {naive_s:.1f} s")
            print(f"ratios unetpipe / naive: peak RSS {rss / naive_rss:.2f}, "
                  f"time {seconds / naive_s:.2f}")
        else:
            print(f"naive baseline skipped: it needs ~{5.5 * size / 1e9:.0f} GB, "
                  f"{available / 1e9:.0f} GB available")
        verdict = "PASS" if rss < 1024 else "FAIL"
        print(f"{verdict}: peak RSS {'<' if rss < 1024 else '>='} 1 GB")
    finally:
        if args.keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
