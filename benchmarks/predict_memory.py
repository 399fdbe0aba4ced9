"""Peak memory of chunked prediction: it depends on the block, not on the stack.

Writes a synthetic 3D stack of at least 4 GB (float32) as a preprocessed
OME-Zarr store (chunks 64 x 256 x 256, as preprocess writes them) and a
stack 8 times smaller (half along each axis), then runs ``unetpipe predict``
on each in its own process, exactly as the workflow's rule does, with the
same settings, and reads the process's peak resident memory (``ru_maxrss``
from ``wait4``).

Targets: peak RSS <= 1.5 GB for the big stack; the big stack's peak at most
10% above the small one's.

The network is a small U-Net (depth 1, 2 features; random weights with
trained-looking BatchNorm statistics) so that a 4 GB stack is predicted in
minutes on two CPU cores; the default network's activations need about
0.5 KB per window voxel on the CPU, which sets how large a block can be
(see docs/architecture.md), but not how memory grows with the stack.

Usage::

    python benchmarks/predict_memory.py [--shape 256 2048 2048] [--block 64 128 128]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("UNETPIPE_BENCH_CACHE", "/tmp/unetpipe-bench"))


def synthetic_stack(shape, path: Path) -> Path:
    """A smooth pattern with noise and blobs, written chunk by chunk (cached)."""
    import dask.array as da

    from unetpipe.io.images import write_ome_zarr

    if (path / "zarr.json").exists():
        return path

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        z, y, x = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in loc[1:]],
                              indexing="ij", sparse=True)
        value = 0.5 + 0.2 * np.sin(z / 7.0) * np.sin(y / 11.0) + 0.2 * np.cos(x / 13.0)
        rng = np.random.default_rng(loc[0][0] * 7919 + loc[1][0] * 31 + loc[2][0])
        value = value + 0.05 * rng.standard_normal(value.shape, dtype=np.float32)
        return value.astype(np.float32)[None]

    chunks = (1, 64, 256, 256)
    data = da.map_blocks(block, dtype=np.float32,
                         chunks=tuple(tuple(min(c, s - i) for i in range(0, s, c))
                                      for c, s in zip(chunks, (1, *shape), strict=True)))
    write_ome_zarr(path, data, axes="czyx", spacing=(1.0, 1.0, 1.0), chunks=chunks[1:],
                   levels=0)
    return path


def small_model(path: Path) -> Path:
    import torch

    from unetpipe.nn.checkpoint import FORMAT, VERSION, save_checkpoint
    from unetpipe.nn.model import UNet

    torch.manual_seed(0)
    model = UNet(ndim=3, in_channels=1, out_channels=2, depth=1, features=2, norm="batch")
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_var.uniform_(0.5, 2.0)
    save_checkpoint({"format": FORMAT, "version": VERSION, "iteration": 0,
                     "model": {"class": "UNet", "config": model.config,
                               "state_dict": model.state_dict()},
                     "targets": {"mode": "two_class"},
                     "data": {"ndim": 3, "channels": 1, "spacing": [1.0] * 3, "unit": None}},
                    path)
    return path


def peak_rss_of(cmd) -> tuple[int, float, int]:
    """Run ``cmd``; return its peak RSS in bytes, seconds and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024, time.perf_counter() - t0, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 2048, 2048])
    parser.add_argument("--block", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="Keep the outputs.")
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    ckpt = small_model(CACHE / "predict-memory-model.pt")
    big = tuple(args.shape)
    small = tuple(s // 2 for s in big)
    results = {}
    for name, shape in (("small", small), ("big", big)):
        store = synthetic_stack(shape, CACHE / f"stack-{'x'.join(map(str, shape))}.ome.zarr")
        out = CACHE / f"probabilities-{name}.ome.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "unetpipe", "-q", "--log", str(CACHE / f"{name}.log"),
               "predict", str(ckpt), str(store), str(out), "--block",
               *map(str, args.block), "--threads", str(args.threads), "--resume", "false"]
        peak, seconds, code = peak_rss_of(cmd)
        if code != 0:
            sys.exit(f"predict failed on the {name} stack; see {CACHE / f'{name}.log'}")
        nbytes = math.prod(shape) * 4
        results[name] = peak
        print(f"{name}: stack {'x'.join(map(str, shape))} float32 = {nbytes / 1e9:.2f} GB; "
              f"peak RSS {peak / 1e9:.3f} GB; {seconds:.0f} s "
              f"({math.prod(shape) / seconds / 1e6:.1f} Mvoxel/s)")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    ratio = results["big"] / results["small"]
    print(f"big stack: peak RSS {results['big'] / 1e9:.3f} GB (target <= 1.5 GB); "
          f"big / small peak = {ratio:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
