"""Peak memory of preprocessing images larger than memory should need.

Writes an input, runs ``unetpipe preprocess`` on it as a separate process
with the default settings, and prints the input's size on disk, the run's
peak resident memory (RSS, as the kernel records it for the child process)
and, measured in the same run as baselines:

* the peak RSS of a process that only imports the same libraries, and
* the naive approach a user might script instead: read the whole stack with
  tifffile, take exact percentiles, normalise in memory and write the same
  chunked Zarr (no pyramid). It needs about 5.5 times the stack's size in
  memory, so it is run only when that much is available; its peak RSS and
  time are the baseline for unetpipe's ratios.

Inputs (``--case``):

* ``stack`` (default): a multi-page uint16 BigTIFF, 272 x 2048 x 2048 (2.3 GB),
  one page per plane, as microscopes write them;
* ``plane``: a 2D uint16 TIFF of 16384 x 16384 (0.5 GB) in a single strip,
  as ImageJ and tifffile write uncompressed images;
* ``zarr``: a 3D uint16 Zarr array of 128 x 2048 x 2048 (1.1 GB) with large
  chunks of 64 x 1024 x 1024 (128 MiB).

Usage::

    python benchmarks/preprocess_memory.py [--case stack|plane|zarr] [--shape ...]
        [--threads 2] [--workdir DIR]
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

CASES = {
    "stack": ((272, 2048, 2048), "stack.tif"),
    "plane": ((16384, 16384), "plane.tif"),
    "zarr": ((128, 2048, 2048), "stack.zarr"),
}


def _planes(shape):
    """Realistic-enough planes: smooth structure plus noise."""
    rng = np.random.default_rng(0)
    ny, nx = shape[-2:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    base = (200 + 150 * np.sin(yy / 97.0) * np.cos(xx / 61.0)).astype(np.float32)
    noise = rng.normal(0, 30, size=(ny, nx)).astype(np.float32)
    for z in range(shape[0] if len(shape) == 3 else 1):
        plane = base * (1 + 0.002 * z) + np.roll(noise, (z * 37) % ny, axis=0)
        yield np.clip(plane, 0, 65535).astype(np.uint16)


def write_input(case: str, path: str, shape: tuple[int, ...]) -> None:
    import tifffile
    import zarr

    if case == "stack":
        tifffile.imwrite(path, _planes(shape), shape=shape, dtype=np.uint16, bigtiff=True,
                         metadata={"axes": "ZYX"})
    elif case == "plane":
        tifffile.imwrite(path, next(_planes(shape)), bigtiff=True, rowsperstrip=shape[0],
                         metadata={"axes": "YX"})
    else:
        z = zarr.create_array(path, shape=shape, chunks=(64, 1024, 1024), dtype="u2",
                              dimension_names=["z", "y", "x"])
        slab = []  # whole 64-plane slabs: no read-modify-write of partial chunks
        for i, plane in enumerate(_planes(shape)):
            slab.append(plane)
            if len(slab) == 64 or i == shape[0] - 1:
                z[i + 1 - len(slab): i + 1] = np.stack(slab)
                slab = []


NAIVE = """
import sys
import numpy as np, tifffile, zarr
stack, out = sys.argv[1:]
a = zarr.open_array(stack, mode="r")[:] if stack.endswith(".zarr") else tifffile.imread(stack)
lo, hi = np.percentile(a, [1.0, 99.8])
f = a.astype(np.float32)
del a
f -= np.float32(lo)
f *= np.float32(1.0 / (hi - lo))
chunks = (1, 64, 256, 256) if f.ndim == 3 else (1, 1024, 1024)
z = zarr.create_array(out, shape=(1,) + f.shape, chunks=chunks, dtype="f4")
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
    parser.add_argument("--case", choices=sorted(CASES), default="stack")
    parser.add_argument("--shape", type=int, nargs="+", default=None,
                        help="Input shape (default: per case, see above).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None,
                        help="Where to write the stack and the output (default: a temp folder).")
    parser.add_argument("--keep", action="store_true", help="Keep the files.")
    args = parser.parse_args()

    shape, name = CASES[args.case]
    shape = tuple(args.shape) if args.shape else shape
    if (args.case == "plane") != (len(shape) == 2):
        parser.error(f"--case {args.case} needs a {'2' if args.case == 'plane' else '3'}D shape")
    work = tempfile.mkdtemp(prefix="unetpipe-bench-", dir=args.workdir)
    try:
        stack = os.path.join(work, name)
        out = os.path.join(work, "out.ome.zarr")
        t = time.perf_counter()
        write_input(args.case, stack, shape)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(stack)
                   for f in files) if os.path.isdir(stack) else os.path.getsize(stack)
        print(f"input ({args.case}): {' x '.join(map(str, shape))} uint16, {size / 1e9:.2f} GB "
              f"on disk (written in {time.perf_counter() - t:.0f} s)")

        base_rss, _ = child_peak_rss_mb(
            [sys.executable, "-c",
             "import dask.array, zarr, tifffile, numpy, unetpipe.stages.preprocess, unetpipe.cli"])
        rss, seconds = child_peak_rss_mb(
            [sys.executable, "-m", "unetpipe", "--quiet", "--log", os.path.join(work, "log"),
             "preprocess", stack, out, "--threads", str(args.threads)])
        out_bytes = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, files in os.walk(out) for f in files)
        print(f"output: {out_bytes / 1e9:.2f} GB (float32 OME-Zarr with pyramid)")
        print(f"peak RSS of `unetpipe preprocess`: {rss:.0f} MB "
              f"({rss / (size / 2**20):.2f} x the input's size on disk)")
        print(f"baseline, importing the same libraries: {base_rss:.0f} MB peak RSS; "
              f"above it: {rss - base_rss:.0f} MB")
        print(f"time: {seconds:.1f} s")
        available = _available_bytes()
        if available > 5.5 * size:
            naive_out = os.path.join(work, "naive.zarr")
            naive_rss, naive_s = child_peak_rss_mb([sys.executable, "-c", NAIVE, stack, naive_out])
            print(f"baseline, naive whole-image preprocessing: {naive_rss:.0f} MB peak RSS "
                  f"({naive_rss / (size / 2**20):.2f} x the input), {naive_s:.1f} s")
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
