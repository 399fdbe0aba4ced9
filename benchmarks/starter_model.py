"""Make unetpipe's starter model: a 2D U-Net trained on domain-randomised synthetic nuclei.

The recipe, which anyone can run again (a CPU run is the default; a GPU is
used when ``--device`` finds one):

1. generate ``--n-train`` training and ``--n-val`` validation images (256 x
   256, pixel units) with :func:`unetpipe.inputs.synth.synthetic_nuclei`,
   each with its own domain settings drawn by
   :func:`unetpipe.inputs.synth.random_domain` (object size, blur, noise,
   texture, background, boundary softness, brightness, shape irregularity,
   density and touching; the ranges are
   :data:`unetpipe.inputs.synth.RANDOM_DOMAIN`), every image from its own
   seed ``[seed, role, index]``; written as TIFFs with their labels and the
   drawn settings (``OUT/data/domains.json``);
2. preprocess them (percentiles 1 and 99.8, the pipeline's default) and
   write three-class targets with the separation weight map (w0 10, sigma 5
   pixels), in this process, with the stages' own functions;
3. ``unetpipe train`` with the default network (depth 4, 16 features, batch
   norm, ``same`` padding: the config's defaults, so that a user's default
   config fine-tunes it without changes), ``--iterations`` at the default
   learning rate and cosine schedule, validated every ``--val-every`` on the
   validation images by the mean AP of the segmentation;
4. ``unetpipe tune`` of the kept checkpoint on the validation images, so the
   starter carries its segmentation settings;
5. pack: the tuned checkpoint without what only resuming needs, its
   floating-point weights stored as float16 (read back as float32), with a
   ``starter`` entry holding the recipe and the validation figures, written
   to ``--install`` (default ``OUT/starter_2d.pt``; the shipped model is
   ``unetpipe/models/starter_2d.pt``).

Usage::

    python benchmarks/starter_model.py --out starter_run [--n-train 96] [--n-val 8]
        [--iterations 14000] [--minutes 120] [--val-every 500] [--seed 0]
        [--device auto] [--threads 2] [--install unetpipe/models/starter_2d.pt]

A run started again with the same ``--out`` reuses the generated data and
stores, and training resumes from ``checkpoint_last.pt``; with a larger
``--iterations`` it continues the finished training (the cosine schedule
then runs over the new total, from where the old one stopped), and the
recipe records every run's ``--iterations`` (``training.runs``). The
shipped model was made by one run, ``--iterations 14000``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from unetpipe.inputs.synth import RANDOM_DOMAIN, random_domain, synthetic_nuclei

ROLES = ("train", "val")
SIGMA_PX = 5.0
W0 = 10.0


def write_tif(path: Path, data: np.ndarray) -> None:
    import tifffile

    tmp = path.with_name(f".{path.name}.partial")
    tifffile.imwrite(tmp, data, imagej=True, metadata={"axes": "YX"})
    os.replace(tmp, path)


def generate(out: Path, counts: dict, shape, seed: int) -> dict:
    """TIFFs and labels per role, and the domain settings drawn for each image."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    files, domains = {}, {}
    for r, role in enumerate(ROLES):
        files[role] = []
        for i in range(counts[role]):
            name = f"{role}_{i:03d}"
            image_path, labels_path = data / f"{name}.tif", data / f"{name}_labels.tif"
            options = random_domain([seed, r, i, 1])
            domains[name] = options
            if not (image_path.exists() and labels_path.exists()):
                image, labels = synthetic_nuclei(tuple(shape), seed=[seed, r, i], **options)
                write_tif(labels_path, labels.astype(np.uint16))
                write_tif(image_path, image)
            files[role].append((name, image_path, labels_path))
    (data / "domains.json").write_text(json.dumps(domains, indent=1) + "\n")
    return files


def prepare(out: Path, files: dict) -> dict:
    """Preprocessed stores (and targets for the training images), made in this process."""
    from unetpipe.stages.preprocess import preprocess_file
    from unetpipe.stages.targets import write_targets

    stores = {}
    for role, entries in files.items():
        stores[role] = []
        for name, image_path, labels_path in entries:
            store = out / "preprocessed" / f"{name}.ome.zarr"
            if not store.exists():
                preprocess_file(image_path, store, labels_path=labels_path, pyramid_levels=0,
                                name=name, progress=False)
            target = out / "targets" / f"{name}.zarr"
            if role == "train" and not target.exists():
                write_targets(store, target, mode="three_class", w0=W0, sigma=SIGMA_PX,
                              progress=False)
            stores[role].append((store, target))
    return stores


def unetpipe(out: Path, name: str, *args, threads: int) -> None:
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "unetpipe", "--log", str(log), *map(str, args),
           "--threads", str(threads)]
    print("$", " ".join(cmd[:8]), "...", flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}); see {log}")


def portable(packed: dict) -> dict:
    """The packed model without paths of the machine that made it: the tuned
    settings name the checkpoint they were tuned for by file name only."""
    tuned = dict(packed.get("segment_params") or {})
    if tuned.get("checkpoint"):
        tuned["checkpoint"] = os.path.basename(tuned["checkpoint"])
        packed = {**packed, "segment_params": tuned}
    return packed


def pack(tuned_path: Path, install: Path, recipe: dict) -> dict:
    """The shipped starter: weights as float16, no resuming state, the recipe inside."""
    import torch

    from unetpipe.nn.checkpoint import plain, read_checkpoint, save_checkpoint

    ckpt = read_checkpoint(tuned_path)
    keep = ("format", "version", "unetpipe_version", "torch_version", "created", "model",
            "normalization", "targets", "data", "config", "iteration", "val_ap", "val_mean_ap",
            "val_select", "val_iou", "finished", "segment_params", "effective_halo")
    packed = {k: ckpt[k] for k in keep if k in ckpt}
    state = {k: (v.half() if v.is_floating_point() else v)
             for k, v in ckpt["model"]["state_dict"].items()}
    packed["model"] = {**ckpt["model"], "state_dict": state}
    packed = portable(packed)
    packed["starter"] = plain(recipe)
    install.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(packed, install)
    torch.load(install, weights_only=True)  # what every reader does
    return packed


def measure_halo(path: Path, seed: int = 0) -> dict:
    """Measure a packed model's halo for ``predict.halo: auto`` on a
    random-domain image like its validation images, and store it in the file
    (training stores it in the checkpoints it writes; a model packed before
    that did not carry it)."""
    import torch

    from unetpipe.inputs.synth import random_domain, synthetic_nuclei
    from unetpipe.nn.checkpoint import (
        EFFECTIVE_HALO,
        build_model,
        read_checkpoint,
        save_checkpoint,
    )
    from unetpipe.nn.tiles import effective_halo
    from unetpipe.stages.preprocess import percentile_normalize

    image, _ = synthetic_nuclei((256, 256), seed=[seed, 9, 0], **random_domain(seed))
    model = build_model(read_checkpoint(path))  # the weights in float32
    low, high = np.percentile(image, read_checkpoint(path)["normalization"]["percentiles"])
    crop = np.asarray(percentile_normalize(image.astype(np.float32), low, high),
                      np.float32)[None]
    found = effective_halo(model, crop, device=torch.device("cpu"))
    packed = torch.load(path, weights_only=True)  # as stored: float16 weights stay so
    packed[EFFECTIVE_HALO] = {**found, "measured_on": f"a random-domain synthetic image "
                                                      f"(seed {seed})"}
    save_checkpoint(packed, path)
    torch.load(path, weights_only=True)
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure-halo", type=Path, default=None, metavar="MODEL",
                        help="only measure the halo of a packed model and store it in it")
    parser.add_argument("--out", type=Path, help="work folder")
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--iterations", type=int, default=14000)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--install", type=Path, default=None,
                        help="where the packed model goes (default OUT/starter_2d.pt)")
    args = parser.parse_args(argv)
    if args.measure_halo is not None:
        print(measure_halo(args.measure_halo, args.seed))
        return
    if args.out is None:
        parser.error("--out is required")
    out = args.out.resolve()
    install = args.install or out / "starter_2d.pt"
    seconds = {}

    t0 = time.perf_counter()
    files = generate(out, {"train": args.n_train, "val": args.n_val}, args.shape, args.seed)
    seconds["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stores = prepare(out, files)
    seconds["prepare"] = time.perf_counter() - t0

    model = out / "model"
    # each run of the script with this --out: its --iterations (a larger one
    # continues the finished training, as `unetpipe train` does)
    runs_path = out / "runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else []
    if not runs or runs[-1] != args.iterations:
        runs.append(args.iterations)
        runs_path.write_text(json.dumps(runs) + "\n")
    t0 = time.perf_counter()
    unetpipe(out, "train", "train", model,
             "--train-images", *[s for s, _ in stores["train"]],
             "--train-targets", *[t for _, t in stores["train"]],
             "--val-images", *[s for s, _ in stores["val"]],
             "--iterations", args.iterations, "--minutes", args.minutes,
             "--val-every", args.val_every, "--select", "segmentation", "--patience", "null",
             "--seed", args.seed, "--device", args.device,
             threads=args.threads)
    seconds["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    params = model / "segment_params.yaml"
    unetpipe(out, "tune", "tune", model / "checkpoint_best.pt", model / "checkpoint_tuned.pt",
             "--params", params, "--val-images", *[s for s, _ in stores["val"]],
             "--device", args.device, threads=args.threads)
    seconds["tune"] = time.perf_counter() - t0

    import re

    import yaml

    ran_on = re.findall(r"stopped by the \w+ budget\) on (\w+)", (out / "logs" / "train.log")
                        .read_text())

    from unetpipe.nn.checkpoint import read_checkpoint

    tuned = yaml.safe_load(params.read_text())
    best = read_checkpoint(model / "checkpoint_tuned.pt")
    recipe = {
        "name": "starter",
        "made_by": "benchmarks/starter_model.py",
        "data": {"train_images": args.n_train, "val_images": args.n_val,
                 "shape": list(args.shape), "seed": args.seed,
                 "generator": "unetpipe.inputs.synth.synthetic_nuclei",
                 "domains": "unetpipe.inputs.synth.random_domain",
                 "ranges": {k: list(v) for k, v in RANDOM_DOMAIN.items()}},
        "targets": {"mode": "three_class", "w0": W0, "sigma_px": SIGMA_PX},
        "training": {"iterations": args.iterations, "runs": runs, "kept_iteration": int(best.get("iteration") or 0),
                     "device": ran_on[-1] if ran_on else args.device,
                     "seconds": round(seconds["train"], 1)},
        "validation": {"images": args.n_val, "ap_0.5": best.get("val_ap"),
                       "mean_ap": best.get("val_mean_ap"),
                       "tuned_mean_ap": (tuned or {}).get("score"),
                       "defaults_mean_ap": (tuned or {}).get("defaults_score")},
        "licence": "MIT, as unetpipe",
    }
    pack(model / "checkpoint_tuned.pt", install, recipe)
    size = install.stat().st_size
    print(json.dumps({"installed": str(install), "bytes": size, "seconds": seconds,
                      "validation": recipe["validation"],
                      "kept_iteration": recipe["training"]["kept_iteration"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
