"""Training throughput: the real data pipeline against in-memory tensors.

Ratio = iterations per second of :func:`unetpipe.stages.train.train_model` with the
default settings (patches read from the demo's Zarr stores by the prefetch
thread, foreground-biased, augmented on the training device, checkpoints
written) / iterations per second of the same model, loss and optimiser
stepping on one batch of tensors already in memory (the limit: no reading,
no augmentation, no checkpoints). Both are timed over the same number of
iterations, alternately, ``--repeat`` times; the medians are compared.
Validation is left out of both (it is not part of a training step).

Target: >= 0.85 on CPU with the defaults.

Usage::

    python benchmarks/train_throughput.py [--iterations 100] [--repeat 5] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
from demo_data import demo_training_data

from unetpipe.core.config import defaults, validate_config
from unetpipe.core.device import select_device
from unetpipe.nn.data import PatchSampler, open_training_sample
from unetpipe.nn.loss import SegmentationLoss
from unetpipe.nn.model import UNet
from unetpipe.stages.train import DEFAULT_PATCH, train_model


def limit_rate(train, config, iterations: int, device) -> float:
    """Iterations per second of the bare training step on one in-memory batch."""
    t, m = config["train"], config["model"]
    samples = [open_training_sample(a, b) for a, b in train]
    patch = tuple(t["patch"] or DEFAULT_PATCH[2])
    x, y, w = PatchSampler(samples, patch_shape=patch, seed=0).batch(0, t["batch_size"])
    classes = 2 if samples[0].mode == "two_class" else 3
    x, y, w = (torch.from_numpy(a).to(device) for a in (x, y, w))
    y = y.long()
    torch.manual_seed(t["seed"])
    model = UNet(ndim=2, in_channels=x.shape[1], out_channels=classes, depth=m["depth"],
                 features=m["features"], padding=m["padding"], norm=m["norm"],
                 dropout=m["dropout"]).to(device).train()
    amp = device.type == "cuda" and t["bf16"]
    if amp:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=t["lr"])
    loss_fn = SegmentationLoss(dice=t["dice"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = loss_fn(logits, y, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())  # the real loop reads the loss every step, too
    sync()
    return iterations / (time.perf_counter() - start)


def real_rate(train, config, iterations: int, folder: str) -> float:
    out = os.path.join(folder, "throughput-model")
    shutil.rmtree(out, ignore_errors=True)
    result = train_model(train, [], out, config=config, progress=False, stop_at=iterations)
    assert result.iterations == iterations
    return result.iterations_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(),
                                                         "unetpipe-bench"))
    args = parser.parse_args()
    targets = defaults()["targets"]
    train, _ = demo_training_data(args.folder, mode=targets["mode"], w0=targets["w0"],
                                  sigma=targets["sigma"])
    # the defaults, minus validation (no validation images, none held out) and
    # the time budget
    config = validate_config({"train": {"minutes": None, "val_fraction": 0,
                                        "device": args.device, "resume": False}})
    device = select_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(train)} training images, {args.iterations} iterations per measurement")
    # one untimed round of each, so one-off start-up costs hit neither side
    real_rate(train, config, 5, args.folder)
    limit_rate(train, config, 5, device)
    reals, limits = [], []
    for k in range(args.repeat):
        reals.append(real_rate(train, config, args.iterations, args.folder))
        limits.append(limit_rate(train, config, args.iterations, device))
        print(f"round {k + 1}: real pipeline {reals[-1]:.3f} it/s, in-memory limit "
              f"{limits[-1]:.3f} it/s, ratio {reals[-1] / limits[-1]:.3f}", flush=True)
    real, limit = statistics.median(reals), statistics.median(limits)
    print(f"median: real pipeline {real:.3f} it/s, limit {limit:.3f} it/s, "
          f"ratio {real / limit:.3f} (target >= 0.85)")


if __name__ == "__main__":
    main()
