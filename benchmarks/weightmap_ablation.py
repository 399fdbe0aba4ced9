"""Does the separation weight map matter? Train on the demo with and without it.

Trains the default U-Net on the demo's training images with the default
budget and seed, once per setting, and scores the best checkpoint on the
demo's validation images and on its large prediction image (both with
ground truth):

- AP at IoU 0.5 of the instances (connected components of the cell class);
- the fraction of touching ground-truth pairs that come out as two objects
  (:func:`unetpipe.stages.metrics.split_pairs`).

Settings: ``w0 = 10`` (the paper's weight map) against ``w0 = 0`` (class
balance only), in ``two_class`` mode (the paper's); ``--modes three_class``
(the default target mode) or both compare the target modes as well. The time budget is switched off, so every run trains
the same number of iterations whatever the machine's load.

Usage::

    python benchmarks/weightmap_ablation.py [--w0 10 0] [--modes two_class three_class]
        [--iterations N] [--threads N] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from demo_data import demo_training_data

from unetpipe.core.config import defaults, validate_config
from unetpipe.inputs.demo import demo_manifest, write_demo
from unetpipe.inputs.synth import touching_pairs
from unetpipe.nn.checkpoint import build_model
from unetpipe.nn.models import load_checkpoint
from unetpipe.nn.tiles import predict_array
from unetpipe.stages.instances import connected_instances
from unetpipe.stages.metrics import match, split_pairs
from unetpipe.stages.preprocess import preprocess_file
from unetpipe.stages.train import VAL_MIN_SIZE, load_val_image, train_model


def score(model, stores, mode):
    """Pooled AP@0.5 and touching-pair split fraction over preprocessed stores."""
    tp = fp = fn = 0
    split = pairs = 0
    for store in stores:
        item = load_val_image(store)
        gt = item.gt
        probs = predict_array(model, item.image, batch_size=2)
        labels = connected_instances(probs, mode=mode, min_size=VAL_MIN_SIZE[gt.ndim])
        m = match(gt, labels)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        touching = sorted(touching_pairs(gt))
        split += int(split_pairs(gt, labels, touching).sum())
        pairs += len(touching)
    return tp / max(tp + fp + fn, 1), split, pairs


def predict_store(folder):
    """The demo's large prediction image, preprocessed, with its ground truth."""
    cfg = defaults()
    demo, pre = cfg["demo"], cfg["preprocess"]
    raw = os.path.join(folder, "demo-predict")
    item = demo_manifest(n_train=0, n_val=0, n_predict=1)[0]
    store = os.path.join(folder, "preprocessed", f"{item.name}.ome.zarr")
    if not os.path.exists(store):
        write_demo(raw, ndim=demo["ndim"], seed=demo["seed"], n_train=0, n_val=0, n_predict=1,
                   predict_shape=demo["predict_shape"], spacing=demo["spacing"], progress=False)
        preprocess_file(os.path.join(raw, item.image), store,
                        labels_path=os.path.join(raw, item.labels),
                        percentiles=pre["percentiles"], clip=pre["clip"],
                        sample_size=pre["sample_size"], chunks=pre["chunks"],
                        pyramid_levels=0, progress=False)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--w0", type=float, nargs="+", default=[10.0, 0.0])
    parser.add_argument("--modes", nargs="+", default=["two_class"],
                        choices=["two_class", "three_class"])
    parser.add_argument("--iterations", type=int, default=None,
                        help="Training iterations (default: the config default).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="Torch threads (default: one per core).")
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(),
                                                         "unetpipe-bench"),
                        help="Where the demo data and models go (reused between runs).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = defaults()
    iterations = args.iterations or cfg["train"]["iterations"]
    big = predict_store(args.folder)
    rows = []
    for mode in args.modes:
        for w0 in args.w0:
            train, val = demo_training_data(args.folder, mode=mode, w0=w0)
            out = os.path.join(args.folder, f"model-{mode}-w0_{w0:g}-it{iterations}-s{args.seed}")
            config = validate_config({"train": {"iterations": iterations, "minutes": None,
                                                "seed": args.seed, "resume": False}})
            start = time.perf_counter()
            result = train_model(train, val, out, config=config, progress=False)
            seconds = time.perf_counter() - start
            model = build_model(load_checkpoint(os.path.join(out, "checkpoint_best.pt")))
            val_ap, val_split, val_pairs = score(model, val, mode)
            big_ap, big_split, big_pairs = score(model, [big], mode)
            rows.append((mode, w0, result.best_iteration, val_ap, val_split, val_pairs, big_ap,
                         big_split, big_pairs, seconds))
            print(f"{mode} w0={w0:g}: done in {seconds:.0f} s", flush=True)
    print(f"\nDemo, seed {args.seed}, {iterations} iterations each; best checkpoint by "
          "validation AP.")
    print("| targets | w0 | best at | val AP@0.5 | val touching pairs split | "
          "predict image AP@0.5 | predict image touching pairs split | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for (mode, w0, best_it, vap, vs, vp, bap, bs, bp, sec) in rows:
        print(f"| {mode} | {w0:g} | {best_it} | {vap:.3f} | {vs}/{vp} = {vs / max(vp, 1):.3f} | "
              f"{bap:.3f} | {bs}/{bp} = {bs / max(bp, 1):.3f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
