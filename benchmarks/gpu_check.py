"""bf16 against fp32 prediction, and segmentation against prediction, on one device.

On the demo's prediction image (the synthetic generator at ``--size``) with
the shipped ``starter`` model (or ``--model``):

- :func:`unetpipe.stages.predict.predict_store` with bf16 autocast and
  without (fp32): throughput of each, their largest disagreement on any
  probability, and AP at IoU 0.5 (and mean AP) of the same segmentation
  (the model's tuned settings) of each against the true labels;
- :func:`unetpipe.stages.segment.segment_store` on the bf16 probabilities
  with every core of the machine: its throughput against prediction's. On a
  GPU, post-processing must keep up: target segment / predict >= 1.

Every figure is a ratio of two runs of this process on this machine; the
device is named in the output. bf16 autocast only applies on CUDA: on the
CPU both runs are fp32 (the script still runs, to check it).

Usage::

    python benchmarks/gpu_check.py [--device cuda] [--size 8192 8192] [--model starter]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps", "auto"])
    p.add_argument("--size", type=int, nargs=2, default=[8192, 8192])
    p.add_argument("--model", default="starter")
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)

    import dask.array as da
    import torch
    import zarr

    from unetpipe.core.cluster import Execution
    from unetpipe.core.config import defaults
    from unetpipe.core.device import select_device
    from unetpipe.inputs.demo import DemoItem, demo_image
    from unetpipe.io.images import LazyImage
    from unetpipe.nn.models import resolve_model
    from unetpipe.stages.metrics import score
    from unetpipe.stages.predict import predict_store
    from unetpipe.stages.preprocess import preprocess_image
    from unetpipe.stages.segment import segment_store
    from unetpipe.stages.tune import segment_settings, tuned_of_store

    device = select_device(args.device, key="--device")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    cores = os.cpu_count() or 1
    folder = args.work or tempfile.mkdtemp(prefix="unetpipe-gpu-check-")
    os.makedirs(folder, exist_ok=True)
    model = os.fspath(resolve_model(args.model))
    image, labels = demo_image(DemoItem("predict", "predict_000", 0),
                               predict_shape=tuple(args.size))
    store = os.path.join(folder, "image.ome.zarr")
    preprocess_image(LazyImage(data=da.from_array(image, chunks=(1024, 1024)), axes="yx",
                               spacing=(1.0, 1.0), unit=None, path="demo"),
                     store, pyramid_levels=2, progress=False)
    pixels = float(np.prod(args.size))
    runs = {}
    for kind, bf16 in (("fp32", False), ("bf16", True)):
        out = os.path.join(folder, f"{kind}.ome.zarr")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        predict_store(model, store, out, device=device.type, bf16=bf16,
                      execution=Execution(threads=cores, progress=False))
        runs[kind] = {"seconds": time.perf_counter() - t0, "out": out}
    probs = {k: np.asarray(zarr.open_array(os.path.join(r["out"], "0"), mode="r"),
                           dtype=np.float32) for k, r in runs.items()}
    disagreement = float(np.abs(probs["bf16"] - probs["fp32"]).max())
    params, _ = segment_settings(defaults()["segment"], tuned_of_store(runs["fp32"]["out"]),
                                 runs["fp32"]["out"])
    for kind, r in runs.items():
        labels_out = os.path.join(folder, f"{kind}-labels.ome.zarr")
        shutil.rmtree(labels_out, ignore_errors=True)
        t0 = time.perf_counter()
        segment_store(r["out"], labels_out, params=params,
                      execution=Execution(threads=cores, progress=False))
        r["segment_seconds"] = time.perf_counter() - t0
        pred = np.asarray(zarr.open_array(os.path.join(labels_out, "0"), mode="r"))
        s = score(labels, pred)
        r["ap"], r["mean_ap"] = s.ap(0.5), s.mean_ap
    print(f"device {name}, {cores} cores, torch {torch.__version__}; image "
          f"{args.size[0]} x {args.size[1]} (the demo's prediction image), model {model}")
    print()
    print("| | predict Mpx/s | segment Mpx/s (all cores) | segment / predict | AP@0.5 | mean AP |")
    print("|---|---|---|---|---|---|")
    for kind, r in runs.items():
        predict_rate = pixels / r["seconds"] / 1e6
        segment_rate = pixels / r["segment_seconds"] / 1e6
        print(f"| {kind} | {predict_rate:.2f} | {segment_rate:.2f} | "
              f"{segment_rate / predict_rate:.2f} | {r['ap']:.4f} | {r['mean_ap']:.4f} |")
    print()
    print(f"bf16 / fp32 predict throughput: {runs['fp32']['seconds'] / runs['bf16']['seconds']:.2f}x; "
          f"largest probability difference {disagreement:.3g}; AP@0.5 difference "
          f"{runs['bf16']['ap'] - runs['fp32']['ap']:+.4f}"
          + ("" if device.type == "cuda" else " (not CUDA: both runs are fp32)"))
    if not args.work:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
