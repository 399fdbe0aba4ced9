"""Prediction against MONAI's sliding window: throughput, peak memory, agreement, AP.

Same model, same image. Contenders, each in a fresh process of its own (its
peak RSS is the process's ``VmHWM``), run alternately ``--repeat`` times:

- **unetpipe**: :func:`unetpipe.stages.predict.predict_store` with its
  defaults, from the preprocessed OME-Zarr store to a probability store (the
  whole call is timed: loading the model, reading, predicting, writing,
  recording for resume; the libraries are imported before, as MONAI's are);
- **MONAI**: ``monai.inferers.sliding_window_inference`` (roi 512 x 512, or
  64 x 128 x 128 for a stack; overlap 0.25; Gaussian blending; one window
  per pass) on the whole image loaded into memory beforehand, then the
  softmax (only the inference and the softmax are timed; the output stays in
  memory, as MONAI keeps it);
- **reference**: ``predict_store`` with ``halo="exact"``, which equals
  whole-image prediction to float tolerance (tests/test_predict.py), for the
  deviations.

Reported: throughput (megapixels of the image per second) and its ratio,
peak RSS and its ratio, the largest deviation of each from the reference,
and, for a trained model, AP at IoU 0.5 (and mean AP over 0.5:0.95) of the
same segmentation (the model's tuned settings, :func:`segment_store`) of
each probability map against the image's true labels.

Image and model: the built-in demo's prediction image (the synthetic
generator at ``--size``, seed as the demo's ``predict_000``) and the shipped
``starter`` model (2D; ``--model`` takes any checkpoint, e.g. the demo's
``results/model/checkpoint_tuned.pt``). For a stack (``--size Z Y X``, a
synthetic stack of 1.0 x 0.5 x 0.5 um voxels) no trained 3D model ships: the
3D demo's network (depth 3, 8 features, anisotropic pooling) with random
weights is used, and AP is not reported.

Usage::

    pip install -e ".[benchmark]"   # MONAI
    python benchmarks/predict_vs_monai.py                         # 2048 x 2048
    python benchmarks/predict_vs_monai.py --size 8192 8192 --repeat 1
    python benchmarks/predict_vs_monai.py --size 64 384 384 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

MONAI_ROI = {2: (512, 512), 3: (64, 128, 128)}


# --- the contenders, each run in a process of its own -------------------------------


def _peak_rss() -> int:
    """This process's peak resident memory in bytes: ``VmHWM`` of its own address
    space (``ru_maxrss`` would carry the parent's peak across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "monai":
        import zarr
        from monai.inferers import sliding_window_inference

        from unetpipe.nn.checkpoint import build_model
        from unetpipe.nn.models import load_checkpoint

        device = torch.device(args.device)
        model = build_model(load_checkpoint(args.model)).eval().to(device)
        image = np.asarray(zarr.open_array(os.path.join(args.store, "0"), mode="r"))
        ndim = image.ndim - 1
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=device.type == "cuda"):
            # on a GPU the windows go to the device, the blended result stays on the host
            logits = sliding_window_inference(
                torch.from_numpy(image[None]), roi_size=MONAI_ROI[ndim], sw_batch_size=1,
                predictor=model, overlap=0.25, mode="gaussian", sw_device=device,
                device=torch.device("cpu"))
            probs = torch.softmax(logits.float(), dim=1)[0].numpy()
        seconds = time.perf_counter() - t0
        rss = _peak_rss()
        np.save(args.out, probs)
        return {"seconds": seconds, "rss": rss}
    # the libraries loaded before the clock starts, as MONAI's are
    import dask.array  # noqa: F401
    import ome_zarr_models.v04.multiscales
    import ome_zarr_models.v05.multiscales  # noqa: F401
    import zarr

    import unetpipe.nn.models  # noqa: F401
    from unetpipe.core.cluster import Execution
    from unetpipe.stages.predict import predict_store

    halo = "exact" if args.child == "reference" else "auto"
    t0 = time.perf_counter()
    # the reference in fp32 everywhere; the contenders in bf16 on a GPU
    result = predict_store(args.model, args.store, args.out, halo=halo, device=args.device,
                           bf16=args.child != "reference",
                           execution=Execution(threads=args.threads, progress=False))
    seconds = time.perf_counter() - t0
    rss = _peak_rss()
    return {"seconds": seconds, "rss": rss, "block": list(result.block),
            "window": list(result.window)}


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "CPU"


def _run(kind: str, model: str, store: str, out: str, threads: int, device: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if os.path.isfile(out):
        os.remove(out)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind,
                           "--model", model, "--store", store, "--out", out,
                           "--threads", str(threads), "--device", device],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- inputs ---------------------------------------------------------------------------


def _inputs(folder: str, size, model: str | None) -> tuple[str, str, np.ndarray | None]:
    """The model's path, the preprocessed store, and the true labels (None for a
    stack: no trained 3D model ships)."""
    from unetpipe.io.images import LazyImage
    from unetpipe.stages.preprocess import preprocess_image

    ndim = len(size)
    labels = None
    if ndim == 2:
        from unetpipe.inputs.demo import DemoItem, demo_image
        from unetpipe.nn.models import resolve_model

        image, labels = demo_image(DemoItem("predict", "predict_000", 0),
                                   predict_shape=tuple(size))
        model = os.fspath(resolve_model(model or "starter"))
    else:
        from unetpipe.inputs.synth import synthetic_nuclei

        image, _ = synthetic_nuclei(tuple(size), spacing=(1.0, 0.5, 0.5), seed=0)
        model = model or _random_3d_model(folder)
    import dask.array as da

    lazy = LazyImage(data=da.from_array(image, chunks=(1024,) * ndim if ndim == 2
                                        else (64, 256, 256)),
                     axes="zyx"[-ndim:], spacing=(1.0, 1.0) if ndim == 2 else (1.0, 0.5, 0.5),
                     unit=None if ndim == 2 else "micrometer", path="demo")
    store = os.path.join(folder, "image.ome.zarr")
    preprocess_image(lazy, store, pyramid_levels=2, progress=False)
    return model, store, labels


def _random_3d_model(folder: str) -> str:
    """The 3D demo's U-Net (workflow/configs/demo-3d.yaml: depth 3, 8 features, z
    pooled from the second level for its 1.0 x 0.5 x 0.5 um voxels), random
    weights with trained-looking BatchNorm statistics."""
    from predict_throughput import random_checkpoint

    return random_checkpoint(os.path.join(folder, "model3d.pt"), ndim=3, depth=3, features=8,
                             pooling=[(1, 2, 2), (2, 2, 2), (2, 2, 2)],
                             spacing=(1.0, 0.5, 0.5), unit="micrometer")


# --- agreement and AP ---------------------------------------------------------------------


def _probabilities(path: str) -> np.ndarray:
    import zarr

    if path.endswith(".npy"):
        return np.load(path)
    return np.asarray(zarr.open_array(os.path.join(path, "0"), mode="r"), dtype=np.float32)


def _deviation(path: str, reference: np.ndarray) -> float:
    return float(np.abs(_probabilities(path) - reference).max())


def _scores(path: str, ours_store: str, labels: np.ndarray, folder: str) -> tuple[float, float]:
    """AP at IoU 0.5 and mean AP of the tuned segmentation of a probability map."""
    import zarr

    from unetpipe.core.cluster import Execution
    from unetpipe.core.config import defaults
    from unetpipe.io.images import write_ome_zarr
    from unetpipe.stages.metrics import score
    from unetpipe.stages.segment import segment_store
    from unetpipe.stages.tune import segment_settings, tuned_of_store

    params, _ = segment_settings(defaults()["segment"], tuned_of_store(ours_store), ours_store)
    if path.endswith(".npy"):  # MONAI's map, as a store with our map's attributes
        store = os.path.join(folder, "monai.ome.zarr")
        shutil.rmtree(store, ignore_errors=True)
        attrs = dict(zarr.open_group(ours_store, mode="r").attrs["unetpipe"])
        write_ome_zarr(store, np.load(path), axes="c" + "zyx"[-labels.ndim:],
                       spacing=(1.0,) * labels.ndim, chunks=(1024,) * labels.ndim, attrs=attrs)
        path = store
    out = os.path.join(folder, "labels.ome.zarr")
    shutil.rmtree(out, ignore_errors=True)
    segment_store(path, out, params=params, execution=Execution(progress=False))
    pred = np.asarray(zarr.open_array(os.path.join(out, "0"), mode="r"))
    s = score(labels, pred)
    return s.ap(0.5), s.mean_ap


# --- the run --------------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs="+", default=[2048, 2048])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--model", default=None,
                   help="Checkpoint (default: the starter for 2D, a random 3D U-Net)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="Where both predict (bf16 autocast on CUDA for both)")
    p.add_argument("--work", default=None, help="Work folder (default: a temporary one)")
    p.add_argument("--child", choices=["unetpipe", "monai", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return
    if len(args.size) not in (2, 3):
        raise SystemExit("--size takes 2 (Y X) or 3 (Z Y X) values")
    folder = args.work or tempfile.mkdtemp(prefix="unetpipe-vs-monai-")
    os.makedirs(folder, exist_ok=True)
    try:
        import monai
        import torch
    except ImportError:
        raise SystemExit("MONAI is missing: pip install -e '.[benchmark]'") from None
    model, store, labels = _inputs(folder, args.size, args.model)
    pixels = float(np.prod(args.size))
    outs = {"unetpipe": os.path.join(folder, "ours.ome.zarr"),
            "monai": os.path.join(folder, "monai.npy"),
            "reference": os.path.join(folder, "reference.ome.zarr")}
    runs = {"unetpipe": [], "monai": []}
    for _ in range(args.repeat):
        for kind in runs:
            runs[kind].append(_run(kind, model, store, outs[kind], args.threads, args.device))
    reference_run = _run("reference", model, store, outs["reference"], args.threads,
                         args.device)
    reference = _probabilities(outs["reference"])

    def summary(kind):
        seconds = statistics.median(r["seconds"] for r in runs[kind])
        rss = statistics.median(r["rss"] for r in runs[kind])
        return pixels / seconds / 1e6, rss / 2**20

    ours, theirs = summary("unetpipe"), summary("monai")
    dev = {k: _deviation(outs[k], reference) for k in runs}
    aps = {}
    if labels is not None:
        aps = {k: _scores(outs[k], outs["unetpipe"], labels, folder) for k in runs}
    first = runs["unetpipe"][0]
    print(f"image {'x'.join(map(str, args.size))} (the demo's prediction image"
          f"{'' if labels is not None else ': synthetic stack'}), model {model}, "
          f"{args.threads} thread(s), {_device_name(args.device)}, torch {torch.__version__}, "
          f"MONAI {monai.__version__}, "
          f"{args.repeat} run(s) each, medians")
    print(f"unetpipe: blocks {first['block']}, windows {first['window']}; MONAI: roi "
          f"{list(MONAI_ROI[len(args.size)])}, overlap 0.25, gaussian; reference (exact halo): "
          f"windows {reference_run['window']}")
    print()
    print("| | Mpx/s | peak RSS (MB) | max deviation from whole-image | AP@0.5 | mean AP |")
    print("|---|---|---|---|---|---|")
    for kind, (mpx, rss) in (("unetpipe `predict_store`", ours), ("MONAI", theirs)):
        key = "unetpipe" if kind.startswith("unet") else "monai"
        ap = aps.get(key)
        print(f"| {kind} | {mpx:.3f} | {rss:,.0f} | {dev[key]:.2e} | "
              f"{f'{ap[0]:.4f}' if ap else 'n/a'} | {f'{ap[1]:.4f}' if ap else 'n/a'} |")
    print(f"| ratio (unetpipe / MONAI) | {ours[0] / theirs[0]:.2f}x | {ours[1] / theirs[1]:.2f} "
          "| | | |")
    if not args.work:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
