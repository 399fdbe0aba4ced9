"""Prediction throughput: the chunked Zarr-to-Zarr pipeline against the bare network.

Ratio = voxels per second of :func:`unetpipe.stages.predict.predict_store` with the
default settings (windows of block + halo read lazily from a preprocessed
OME-Zarr store, mirror-padded, batched through the network by Dask threads,
softmax, cropped, written to the output store and recorded for resume;
the whole call is timed, checkpoint loading included) / voxels per second
of the same network's forward pass, as predict runs it (BatchNorm folded
into the convolutions, channels-last memory format, the heap keeping its
buffers), over the same windows already in memory, with the same threads
(the limit: no reading, no writing, no softmax). The windows are those of
predict's first, untimed call (its ``auto`` halo measured there).

The limit is measured two ways, and the faster one is used:

- the same arrangement as predict: as many threads as predict has Dask
  threads, each running forward passes with ``threads // workers`` torch
  threads;
- one thread running forward passes with every torch thread.

Pipeline and limit are timed alternately, ``--repeat`` times; the medians
are compared. Target: >= 0.85 on CPU with the defaults (a 2048 x 2048 image,
the default U-Net of the config, depth 4 and 16 features, random weights
with trained-looking BatchNorm statistics, blocks of 512 x 512 with the
``auto`` halo).

Usage::

    python benchmarks/predict_throughput.py [--size 2048 2048] [--repeat 3] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from unetpipe.core.cluster import Execution
from unetpipe.core.config import defaults
from unetpipe.core.device import select_device
from unetpipe.core.memory import reuse_large_buffers
from unetpipe.io.images import write_ome_zarr
from unetpipe.nn.checkpoint import FORMAT, VERSION, build_model, save_checkpoint
from unetpipe.nn.model import UNet
from unetpipe.nn.models import load_checkpoint
from unetpipe.nn.tiles import block_origins, channels_last, fold_batchnorm, read_window
from unetpipe.stages.predict import default_workers, predict_store


def random_checkpoint(path: str, *, ndim: int, spacing=None, unit=None, **net) -> str:
    """A checkpoint of a U-Net (1 channel in, 3 classes out, ``net`` its other
    settings) with random weights and trained-looking BatchNorm statistics."""
    torch.manual_seed(0)
    model = UNet(ndim=ndim, in_channels=1, out_channels=3, **net)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_var.uniform_(0.5, 2.0)
    save_checkpoint({"format": FORMAT, "version": VERSION, "iteration": 0,
                     "model": {"class": "UNet", "config": model.config,
                               "state_dict": model.state_dict()},
                     "targets": {"mode": "three_class"},
                     "data": {"ndim": ndim, "channels": 1,
                              "spacing": list(spacing or [1.0] * ndim), "unit": unit}}, path)
    return path


def make_inputs(folder: str, size, config) -> tuple[str, str]:
    """A default-config U-Net checkpoint (random weights, trained-looking
    BatchNorm statistics) and a smooth synthetic image as a preprocessed store."""
    m = config["model"]
    ckpt = random_checkpoint(os.path.join(folder, "model.pt"), ndim=len(size),
                             depth=m["depth"], features=m["features"], padding=m["padding"],
                             norm=m["norm"])
    grids = np.meshgrid(*[np.linspace(0, 40, s, dtype=np.float32) for s in size],
                        indexing="ij", sparse=True)
    image = (0.5 + 0.25 * sum(np.sin(g * (1.0 + 0.3 * i)) for i, g in enumerate(grids)))
    rng = np.random.default_rng(0)
    image = (image + 0.05 * rng.standard_normal(image.shape)).astype(np.float32)
    store = os.path.join(folder, "image.ome.zarr")
    write_ome_zarr(store, image[None], axes="c" + "zyx"[-len(size):],
                   spacing=(1.0,) * len(size), levels=2)
    return ckpt, store


def limit_seconds(model, windows, *, workers: int, torch_threads: int, batch: int,
                  device) -> float:
    """Seconds for the bare forward passes over in-memory windows."""
    fmt = torch.channels_last if windows[0].ndim == 3 else torch.channels_last_3d
    batches = [torch.from_numpy(np.stack(windows[i:i + batch])).to(device)
               .contiguous(memory_format=fmt) for i in range(0, len(windows), batch)]

    def run(x):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=device.type == "cuda"):
            model(x)

    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if workers == 1:
            for x in batches:
                run(x)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run, batches))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    config = defaults()
    pcfg = config["predict"]
    device = select_device(args.device, key="predict.device")
    folder = tempfile.mkdtemp(prefix="unetpipe-predict-bench-")
    try:
        ckpt, store = make_inputs(folder, args.size, config)
        # the network as predict runs it: BatchNorm folded, channels last
        model = channels_last(fold_batchnorm(build_model(load_checkpoint(ckpt)))).to(device)
        # the windows predict uses (its halo, "auto", is measured at its first call)
        first = predict_store(ckpt, store, os.path.join(folder, "warm.ome.zarr"),
                              device=args.device, block=pcfg["block"], halo=pcfg["halo"],
                              execution=Execution(threads=args.threads, progress=False))
        block, window = first.block, first.window
        offset = tuple((w - b) // 2 for w, b in zip(window, block, strict=True))
        workers = pcfg["workers"] or default_workers(args.threads, device.type)
        torch_threads = max(1, args.threads // workers)
        batch = pcfg["batch_size"] or (4 if device.type == "cuda" else 1)
        image = np.zeros((1, *args.size), np.float32)
        import zarr

        image[:] = zarr.open_array(os.path.join(store, "0"), mode="r")[...]
        origins = block_origins(args.size, block)
        windows = [read_window(image, [o - f for o, f in zip(origin, offset, strict=True)],
                               window) for origin in origins]
        voxels = math.prod(args.size)
        print(f"image {'x'.join(map(str, args.size))} ({voxels / 1e6:.1f} Mvoxel), "
              f"{len(origins)} blocks of {'x'.join(map(str, block))}, windows of "
              f"{'x'.join(map(str, window))} ({len(origins) * math.prod(window) / 1e6:.1f} "
              f"Mvoxel with halo), device {device}, {args.threads} threads: "
              f"{workers} Dask thread(s) x {torch_threads} torch thread(s), batch {batch}")
        # warm-up: allocator, oneDNN kernels; the heap as predict keeps it
        reuse_large_buffers()
        limit_seconds(model, windows[:2], workers=1, torch_threads=args.threads, batch=batch,
                      device=device)
        pipe, same, single = [], [], []
        for r in range(args.repeat):
            out = os.path.join(folder, f"out{r}.ome.zarr")
            t0 = time.perf_counter()
            result = predict_store(ckpt, store, out, device=args.device, block=pcfg["block"],
                                   halo=pcfg["halo"],
                                   execution=Execution(threads=args.threads, progress=False))
            pipe.append(time.perf_counter() - t0)
            assert result.computed == len(origins)
            shutil.rmtree(out)
            same.append(limit_seconds(model, windows, workers=workers,
                                      torch_threads=torch_threads, batch=batch, device=device))
            single.append(limit_seconds(model, windows, workers=1,
                                        torch_threads=args.threads, batch=batch, device=device))
            print(f"  run {r}: predict {pipe[-1]:.2f} s, forward ({workers} x "
                  f"{torch_threads} threads) {same[-1]:.2f} s, forward (1 x {args.threads} "
                  f"threads) {single[-1]:.2f} s")
        p, s1, s2 = (statistics.median(v) for v in (pipe, same, single))
        limit = min(s1, s2)
        print(f"predict (Zarr in, Zarr out, whole call): {voxels / p / 1e6:.3f} Mvoxel/s")
        print(f"limit (forward over the same windows in memory): {voxels / limit / 1e6:.3f} "
              f"Mvoxel/s ({'same arrangement' if s1 <= s2 else 'one thread, all torch threads'})"
              f"; model-only window throughput {len(origins) * math.prod(window) / limit / 1e6:.3f}"
              f" Mvoxel/s")
        print(f"ratio: {limit / p:.3f} (target >= 0.85)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
