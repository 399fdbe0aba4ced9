"""Away from the demo: default vs tuned segmentation, and how the checkpoint is chosen.

A user with a new kind of images trains on one or two annotated images and
segments the rest. This benchmark asks, per synthetic domain that differs
from the demo (:data:`unetpipe.inputs.synth.DOMAINS`: small blurred nuclei,
large lobed ones, soft boundaries in crowds, coarse-z stacks), how the
trained model does on unseen images of that domain

(a) with the built-in segmentation defaults, against
(b) settings tuned on a validation image (``unetpipe tune``); and

(c) with the checkpoint that training kept by AP@0.5 of connected
    components (``--select components``), against
(d) the one kept by the mean AP of the real segmentation
    (``--select segmentation``).

It drives the command line as a user would, each step a child process
(``python -m unetpipe ...``) with its log under ``OUT/DOMAIN/rR/logs/``:

1. generate, with :func:`~unetpipe.inputs.synth.synthetic_nuclei` and the
   domain's preset, ``--n-train`` training images, one validation image and
   ``--n-test`` test images, every image from its own seed (domain, role,
   index and repeat), written as uint16 ImageJ TIFFs with their labels (with
   the pixel size in micrometres for calibrated domains);
2. ``unetpipe preprocess IMAGE STORE --labels LABELS`` for each, with
   ``--spacing`` for calibrated domains (the 3D one);
3. ``unetpipe targets`` for the training images (``--sigma`` of 5 pixels of
   the finest axis, in micrometres, for calibrated domains);
4. ``unetpipe train`` twice with the same data, seed and budget,
   differing only in ``--select components`` / ``--select segmentation``
   (``--patience null`` and ``--deterministic true``, so that both runs
   follow the same trajectory for the whole budget; only the kept
   checkpoint can differ, unless ``--minutes`` cuts one run short);
5. ``unetpipe tune`` of each ``checkpoint_best.pt`` on the validation image:
   ``segment_params.yaml`` (the chosen settings, their score and the
   defaults' score on the validation image);
6. ``unetpipe predict`` of every test image with the untuned
   ``checkpoint_best.pt``, then ``unetpipe segment`` twice: with the built-in
   defaults, and with ``--params segment_params.yaml``.

The test images' segmentations are scored against their true labels with
:func:`unetpipe.stages.metrics.score`, and the match counts of the test
images are pooled (:func:`~unetpipe.stages.metrics.pool_scores`) into one
row per domain, checkpoint choice and settings. It prints

* a Markdown table: domain | checkpoint chosen by | settings | AP@0.5 |
  AP@0.7 | AP@0.9 | mean AP (0.5:0.95) | mean AP relative to the baseline
  measured in the same run (components-chosen checkpoint, default
  settings). With ``--repeats R > 1`` (new data and training seeds per
  repeat) each cell is the mean over the repeats ± their standard
  deviation;
* per domain and checkpoint choice: the training iterations run, the
  iteration of the kept checkpoint, the tuned settings and the tuning
  objective on the validation image for the tuned settings and for the
  defaults;
* the wall time per domain (all repeats), split into generate,
  preprocess, targets, train, tune, predict and segment.

Everything, with the per-threshold counts of every row, is written to
``OUT/results.json``. Work goes to ``--out`` (default: a new folder under
``./shifted_domain_runs/``). A run started again with the same ``--out`` and
the same settings skips the steps whose outputs exist (a killed run
resumes); other settings in the same folder are refused.

Budget: ``--iterations`` (default 600 for 2D domains, 300 for 3D) at
``--val-every`` (default 50), capped by ``--minutes`` per training run
(default 20, meant not to bind: when it does, the two runs may stop at
different iterations, which the iterations column shows). The default
model, patch and augmentation are the command line's; ``--train-args``
adds options to both training runs (say ``--train-args "--depth 3 --patch
16 96 96"``). On a 2-core CPU a 2D domain takes several minutes per
training run. The 3D domain is much dearer there: with the default model
(depth 4, 16 features, patches of 32 x 96 x 96, batch 4) one iteration took
about 15 s on 2 busy cores, and predicting one 24 x 128 x 128 stack
(validation during training, tuning, each test stack) about 50 s, because
every block is read with a halo of half the network's receptive field (a
window of 88 x 352 x 352): 300 iterations are over an hour per run. Run it
on a GPU, or give it a smaller network or patch. ``--quick`` is a smoke
test of the whole chain in about 2.5 minutes on 2 cores (two domains, 96 x
96 images and 12 x 64 x 64 stacks, one training and one test image, 20
iterations of a small network); its numbers mean nothing.

Usage::

    python benchmarks/shifted_domain.py [--domains small-blurry,large-irregular,soft-dense,coarse-z-3d]
        [--n-train 2] [--n-test 3] [--shape2d 256 256] [--shape3d 24 128 128]
        [--iterations N] [--minutes 20] [--val-every 50] [--train-args "..."]
        [--repeats 1] [--seed 0] [--threads 2] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from unetpipe.inputs.synth import DOMAINS, domain_options, synthetic_nuclei

DEFAULT_DOMAINS = ("small-blurry", "large-irregular", "soft-dense", "coarse-z-3d")
QUICK_DOMAINS = ("small-blurry", "coarse-z-3d")
SELECTS = ("components", "segmentation")
SETTINGS = ("defaults", "tuned")
ROLES = ("train", "val", "test")
STAGES = ("generate", "preprocess", "targets", "train", "tune", "predict", "segment")
# the sigma of the separation weight map, in pixels of the finest axis (the
# command's default of 5 is in micrometres once the images are calibrated)
SIGMA_PX = 5.0
QUICK = {"shape2d": (96, 96), "shape3d": (12, 64, 64), "n_train": 1, "n_test": 1,
         "iterations": 20, "val_every": 10,
         "train_args": ["--depth", "3", "--features", "8", "--batch-size", "2"],
         "patch2d": (64, 64), "patch3d": (8, 48, 48)}


# --- the command line as a child process ---------------------------------------------


class Runner:
    """Runs ``python -m unetpipe`` commands, logging each and timing them by stage."""

    def __init__(self, logs: Path, threads: int):
        self.logs = logs
        self.threads = threads
        self.seconds = dict.fromkeys(STAGES, 0.0)
        logs.mkdir(parents=True, exist_ok=True)

    def __call__(self, stage: str, name: str, *args, output: Path | None = None,
                 threads: bool = True) -> str:
        """Run one command unless ``output`` exists already; return its stdout."""
        if output is not None and output.exists():
            return ""
        log = self.logs / f"{name}.log"
        cmd = [sys.executable, "-m", "unetpipe", "-q", "--log", str(log), *map(str, args)]
        if threads:
            cmd += ["--threads", str(self.threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        self.seconds[stage] += time.perf_counter() - t0
        if proc.returncode != 0:
            tail = log.read_text().splitlines()[-20:] if log.exists() else []
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n"
                     + "\n".join(tail) + "\n" + proc.stderr[-3000:])
        return proc.stdout


# --- data --------------------------------------------------------------------------


def image_seed(base: int, domain: str, role: str, index: int) -> list[int]:
    """Seed of one image: distinct per base seed (repeat), domain, role and index."""
    return [base, zlib.crc32(domain.encode()), ROLES.index(role), index]


def write_tif(path: Path, data: np.ndarray, spacing=None) -> None:
    """A uint16 TIFF as a user's files would be: ImageJ axes, and the pixel size if known."""
    import tifffile

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        metadata = {"axes": "ZYX" if data.ndim == 3 else "YX"}
        extra = {}
        if spacing is not None:
            metadata.update(unit="um")
            if data.ndim == 3:
                metadata["spacing"] = float(spacing[0])
            extra["resolution"] = (1.0 / spacing[-2], 1.0 / spacing[-1])
        tifffile.imwrite(tmp, data, imagej=True, metadata=metadata, **extra)
        os.replace(tmp, path)


def generate(folder: Path, domain: str, shape, counts: dict, seed: int) -> dict:
    """TIFF images and labels per role: {role: [(image, labels), ...]}."""
    options = domain_options(domain)
    options.pop("shape")
    files = {}
    for role in ROLES:
        files[role] = []
        for i in range(counts[role]):
            image_path = folder / "data" / f"{role}_{i}.tif"
            labels_path = folder / "data" / f"{role}_{i}_labels.tif"
            if not (image_path.exists() and labels_path.exists()):
                image, labels = synthetic_nuclei(tuple(shape), seed=image_seed(seed, domain, role, i),
                                                 **options)
                if labels.dtype != np.uint16:
                    raise ValueError(f"{domain}: {int(labels.max())} objects do not fit uint16")
                write_tif(image_path, image, options.get("spacing"))
                write_tif(labels_path, labels, options.get("spacing"))
            files[role].append((image_path, labels_path))
    return files


# --- one domain, one repeat --------------------------------------------------------


def read_params(path: Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def training_summary(run: Runner, model: Path) -> dict:
    """Iterations run (history.csv), and the kept checkpoint's iteration and scores."""
    with open(model / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    info = json.loads(run("train", f"info-{model.name}", "info", "--json",
                          model / "checkpoint_best.pt", threads=False))
    if info.get("segmentation"):
        # the "defaults" rows would not be the built-in defaults then
        print(f"warning: {model / 'checkpoint_best.pt'} carries segmentation settings "
              f"{info['segmentation']}", flush=True)
    return {"iterations": int(float(rows[-1]["iteration"])) if rows else 0,
            "best": {"iteration": (info.get("training") or {}).get("iteration"),
                     **(info.get("metrics") or {})}}


def run_domain(domain: str, repeat: int, args, out: Path) -> tuple[list[dict], dict, dict]:
    """All steps for one domain and repeat; (rows, per-select info, stage seconds)."""
    from unetpipe.io.images import read_labels
    from unetpipe.stages.metrics import pool_scores, score

    preset = DOMAINS[domain]
    ndim = len(preset["shape"])
    spacing = preset.get("spacing")
    shape = args.shape2d if ndim == 2 else args.shape3d
    folder = out / domain / f"r{repeat}"
    run = Runner(folder / "logs", args.threads)
    seed = args.seed + repeat

    t0 = time.perf_counter()
    files = generate(folder, domain, shape,
                     {"train": args.n_train, "val": 1, "test": args.n_test}, seed)
    run.seconds["generate"] += time.perf_counter() - t0

    calibration = ["--spacing", *spacing] if spacing else []
    stores = {}
    for role, pairs in files.items():
        stores[role] = []
        for i, (image, labels) in enumerate(pairs):
            store = folder / "preprocessed" / f"{role}_{i}.ome.zarr"
            run("preprocess", f"preprocess-{role}_{i}", "preprocess", image, store,
                "--labels", labels, *calibration, output=store)
            stores[role].append(store)

    sigma = ["--sigma", SIGMA_PX * min(spacing)] if spacing else []
    targets = []
    for i, store in enumerate(stores["train"]):
        target = folder / "targets" / f"train_{i}.zarr"
        run("targets", f"targets-train_{i}", "targets", store, target, *sigma, output=target)
        targets.append(target)

    iterations = args.iterations or (600 if ndim == 2 else 300)
    # --quick's patch first, so that a --patch in --train-args wins
    patch = args.patch2d if ndim == 2 else args.patch3d
    extra = [*(["--patch", *patch] if patch else []), *args.train_args]
    rows, info = [], {}
    for select in SELECTS:
        model = folder / f"model-{select}"
        done = model / "benchmark.done"
        if not done.exists():
            run("train", f"train-{select}", "train", model,
                "--train-images", *stores["train"], "--train-targets", *targets,
                "--val-images", *stores["val"], "--iterations", iterations,
                "--minutes", args.minutes, "--val-every", args.val_every,
                "--select", select, "--patience", "null", "--seed", seed,
                "--deterministic", "true", *extra)
            done.write_text("trained\n")
        best = model / "checkpoint_best.pt"
        params = model / "segment_params.yaml"
        run("tune", f"tune-{select}", "tune", best, model / "checkpoint_tuned.pt",
            "--params", params, "--val-images", *stores["val"], output=params)
        tuned = read_params(params)
        info[select] = {**training_summary(run, model), "params": tuned.get("params"),
                        "tune_score": tuned.get("score"),
                        "defaults_score": tuned.get("defaults_score"),
                        "objective": tuned.get("objective")}

        per_setting = {setting: [] for setting in SETTINGS}
        for i, store in enumerate(stores["test"]):
            probs = model / "probabilities" / f"test_{i}.ome.zarr"
            run("predict", f"predict-{select}-test_{i}", "predict", best, store, probs,
                output=probs)
            truth = read_labels(files["test"][i][1]).data.compute()
            for setting in SETTINGS:
                labels = model / f"labels-{setting}" / f"test_{i}.ome.zarr"
                run("segment", f"segment-{select}-{setting}-test_{i}", "segment", probs, labels,
                    *(["--params", params] if setting == "tuned" else []), output=labels)
                pred = read_labels(labels).data.compute()
                per_setting[setting].append(score(truth, pred.reshape(truth.shape)))
        for setting in SETTINGS:
            pooled = pool_scores(per_setting[setting])
            rows.append({"domain": domain, "repeat": repeat, "select": select,
                         "settings": setting, "ap_0.5": pooled.ap(0.5), "ap_0.7": pooled.ap(0.7),
                         "ap_0.9": pooled.ap(0.9), "mean_ap": pooled.mean_ap,
                         "scores": pooled.to_dict()})
    return rows, info, run.seconds


# --- report ------------------------------------------------------------------------


def cell(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def report(rows: list[dict], infos: dict, seconds: dict, domains, repeats: int) -> str:
    lines = ["| domain | checkpoint chosen by | settings | AP@0.5 | AP@0.7 | AP@0.9 | mean AP "
             "| mean AP / baseline |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for domain in domains:
        base = {r["repeat"]: r["mean_ap"] for r in rows if r["domain"] == domain
                and r["select"] == "components" and r["settings"] == "defaults"}
        for select in SELECTS:
            for setting in SETTINGS:
                mine = [r for r in rows if (r["domain"], r["select"], r["settings"])
                        == (domain, select, setting)]
                ratio = [r["mean_ap"] / base[r["repeat"]] if base.get(r["repeat"]) else None
                         for r in mine]
                lines.append(f"| {domain} | {select} | {setting} | "
                             + " | ".join(cell([r[k] for r in mine])
                                          for k in ("ap_0.5", "ap_0.7", "ap_0.9", "mean_ap"))
                             + f" | {cell(ratio)} |")
    lines += ["", "Training (iterations run, the kept checkpoint and its validation scores) "
              "and tuning (the objective on the validation image):", ""]
    for domain in domains:
        for select in SELECTS:
            for repeat in range(repeats):
                i = infos[domain][repeat][select]
                tag = f" r{repeat}" if repeats > 1 else ""
                best = i["best"]
                lines.append(
                    f"- {domain}{tag}, chosen by {select}: {i['iterations']} iterations, "
                    f"kept {best.get('iteration')} (validation AP@0.5 "
                    f"{_num(best.get('val_ap'))}, mean AP {_num(best.get('val_mean_ap'))}); "
                    f"{i['objective']} tuned {_num(i['tune_score'])} vs defaults "
                    f"{_num(i['defaults_score'])}; tuned settings {_settings(i['params'])}")
    lines += ["", "Wall time per domain (all repeats):", ""]
    for domain in domains:
        total = sum(seconds[domain].values())
        parts = ", ".join(f"{stage} {seconds[domain][stage]:.0f} s" for stage in STAGES)
        lines.append(f"- {domain}: {total:.0f} s ({parts})")
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _settings(params) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items() if v is not None)


# --- main --------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default=None,
                        help="comma-separated domains of unetpipe.inputs.synth.DOMAINS "
                             f"(default {','.join(DEFAULT_DOMAINS)}; "
                             f"with --quick {','.join(QUICK_DOMAINS)})")
    parser.add_argument("--n-train", type=int, default=None, help="training images (2)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (3)")
    parser.add_argument("--shape2d", type=int, nargs=2, default=None, metavar=("Y", "X"),
                        help="shape of 2D images (default the domain's hint, 256 256)")
    parser.add_argument("--shape3d", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="shape of 3D stacks (default the domain's hint, 24 128 128)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations (default 600 for 2D, 300 for 3D)")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="wall-clock cap per training run (default 20)")
    parser.add_argument("--val-every", type=int, default=None,
                        help="validate (and maybe keep a checkpoint) every N iterations (50)")
    parser.add_argument("--train-args", default="",
                        help="further options for both `unetpipe train` runs, one string, "
                             "e.g. \"--depth 3 --patch 16 96 96\"")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeats with other data and training seeds (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (repeat r uses seed + r)")
    parser.add_argument("--threads", type=int, default=2, help="threads per command (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="work folder (default a new folder under ./shifted_domain_runs/)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny images, a small network, 20 iterations")
    args = parser.parse_args(argv)

    names = (args.domains.split(",") if args.domains
             else QUICK_DOMAINS if args.quick else DEFAULT_DOMAINS)
    args.domains = [n.strip() for n in names if n.strip()]
    for name in args.domains:
        try:
            domain_options(name)
        except ValueError as e:
            parser.error(str(e))
    quick = QUICK if args.quick else {}
    args.n_train = args.n_train or quick.get("n_train", 2)
    args.n_test = args.n_test or quick.get("n_test", 3)
    args.shape2d = tuple(args.shape2d or quick.get("shape2d") or DOMAINS["demo"]["shape"])
    args.shape3d = tuple(args.shape3d or quick.get("shape3d")
                         or DOMAINS["coarse-z-3d"]["shape"])
    args.iterations = args.iterations or quick.get("iterations")
    args.val_every = args.val_every or quick.get("val_every", 50)
    args.train_args = [*quick.get("train_args", []), *shlex.split(args.train_args)]
    args.patch2d = quick.get("patch2d")
    args.patch3d = quick.get("patch3d")
    for name in ("n_train", "n_test", "repeats", "threads", "val_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def work_folder(args, prefix: str = "") -> tuple[Path, dict]:
    """The work folder (``--out``, or a new one under ``./shifted_domain_runs/``) and
    the run's settings, recorded there; a folder holding other settings is refused."""
    if args.out is None:
        Path("shifted_domain_runs").mkdir(exist_ok=True)
        args.out = Path(tempfile.mkdtemp(prefix=time.strftime(f"{prefix}%Y%m%d-%H%M%S-"),
                                         dir="shifted_domain_runs"))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in vars(args).items() if k != "out"}
    recorded = out / "settings.json"
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        sys.exit(f"{out} holds a run with other settings ({recorded}); choose another --out")
    recorded.write_text(json.dumps(settings, indent=1) + "\n")
    print(f"work folder: {out}", flush=True)
    return out, settings


def main(argv=None) -> None:
    args = parse_args(argv)
    out, settings = work_folder(args)

    rows, infos, seconds = [], {}, {}
    for domain in args.domains:
        infos[domain], seconds[domain] = {}, dict.fromkeys(STAGES, 0.0)
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            new_rows, info, stage_seconds = run_domain(domain, repeat, args, out)
            rows += new_rows
            infos[domain][repeat] = info
            for stage, s in stage_seconds.items():
                seconds[domain][stage] += s
            best = max(new_rows, key=lambda r: r["mean_ap"])
            print(f"{domain} r{repeat}: {time.perf_counter() - t0:.0f} s; best mean AP "
                  f"{best['mean_ap']:.3f} ({best['select']}, {best['settings']})", flush=True)

    text = report(rows, infos, seconds, args.domains, args.repeats)
    print()
    print(text)
    results = {"settings": settings, "rows": rows,
               "training": {d: {str(r): v for r, v in reps.items()} for d, reps in infos.items()},
               "seconds": seconds}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"\nwritten: {out / 'results.json'}")


if __name__ == "__main__":
    main()
