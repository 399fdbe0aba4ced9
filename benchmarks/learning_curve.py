"""Few annotated images: from scratch against fine-tuned from ``starter``, and zero-shot models.

A user with a new kind of images annotates one, two or four of them. This
benchmark asks, per synthetic domain that differs from the demo
(:data:`unetpipe.inputs.synth.DOMAINS`, the 2D ones of
``benchmarks/shifted_domain.py``), how well unseen images of that domain are
segmented by

* ``scratch-N``: a U-Net trained from random weights on N images;
* ``starter-N``: the same training started from the starter model
  (``--init starter``), same data, seed and budget;
* ``starter`` zero-shot: the starter model as shipped, no training;
* ``demo`` zero-shot: the model the demo workflow trains (``snakemake
  --cores 2`` in this checkout: ``results/model/checkpoint_tuned.pt``, or
  ``--demo-model``), no training on the domain.

for N in ``--sizes`` (default 1, 2, 4). It drives the command line as a user
would, each step a child process (``python -m unetpipe ...``) with its log
under ``OUT/DOMAIN/logs/``:

1. generate, with the domain's preset, 4 training images, one validation
   image and ``--n-test`` test images (256 x 256 uint16 TIFFs with their
   labels), every image from its own seed (the same seeds as
   ``benchmarks/shifted_domain.py``), the first N training images being the
   N-image training set;
2. ``unetpipe preprocess`` and ``unetpipe targets`` (three classes, the
   separation weight map) for the training and validation images;
3. per N and start: ``unetpipe train`` for ``--iterations`` (default 600)
   validated every ``--val-every`` (default 100) on the validation image by
   the mean AP of the segmentation, ``--patience null`` and
   ``--deterministic true`` (equal budget), then ``unetpipe tune`` on the
   validation image, as the workflow does;
4. ``unetpipe apply MODEL TEST_FOLDER --out ...`` for every model (the
   tuned checkpoints, ``starter``, the demo's model), each with its own
   normalisation and tuned segmentation settings.

The test images' labels are scored against the truth with
:func:`unetpipe.stages.metrics.score`, pooled over the test images
(:func:`~unetpipe.stages.metrics.pool_scores`). It prints a Markdown table
(domain | model | training images | AP@0.5 | AP@0.7 | AP@0.9 | mean AP),
the two checks the project holds itself to (fine-tuned beats from scratch
with one image; zero-shot starter beats the demo's model zero-shot), and
the wall time per domain; everything goes to ``OUT/results.json``. A run
started again with the same ``--out`` skips the steps whose outputs exist.

Usage::

    python benchmarks/learning_curve.py [--domains small-blurry,large-irregular,soft-dense]
        [--sizes 1,2,4] [--n-test 3] [--iterations 600] [--val-every 100]
        [--demo-model results/model/checkpoint_tuned.pt] [--seed 0] [--threads 2]
        [--out DIR] [--quick]

``--quick`` is a smoke test (one domain, 96 x 96 images, sizes 1, 20
iterations); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shifted_domain import SIGMA_PX, Runner, generate, work_folder

from unetpipe.inputs.synth import domain_options

DEFAULT_DOMAINS = ("small-blurry", "large-irregular", "soft-dense")
STAGES = ("generate", "preprocess", "targets", "train", "tune", "apply")
STARTS = ("scratch", "starter")


def score_folder(labels_dir: Path, truths: list[Path]) -> dict:
    """Pooled scores of ``labels_dir/NAME.ome.zarr`` against the true labels."""
    from unetpipe.io.images import read_labels
    from unetpipe.stages.metrics import pool_scores, score

    scores = []
    for truth_path in truths:
        name = truth_path.name.replace("_labels.tif", "")
        truth = read_labels(truth_path).data.compute()
        pred = read_labels(labels_dir / f"{name}.ome.zarr").data.compute()
        scores.append(score(truth, pred.reshape(truth.shape)))
    pooled = pool_scores(scores)
    return {"ap_0.5": pooled.ap(0.5), "ap_0.7": pooled.ap(0.7), "ap_0.9": pooled.ap(0.9),
            "mean_ap": pooled.mean_ap, "scores": pooled.to_dict()}


def run_domain(domain: str, args, out: Path) -> tuple[list[dict], dict]:
    """Every model of one domain, scored on its test images; (rows, stage seconds)."""
    folder = out / domain
    run = Runner(folder / "logs", args.threads)
    run.seconds = dict.fromkeys(STAGES, 0.0)
    t0 = time.perf_counter()
    files = generate(folder, domain, args.shape,
                     {"train": max(args.sizes), "val": 1, "test": args.n_test}, args.seed)
    run.seconds["generate"] += time.perf_counter() - t0

    # the test images alone in a folder, as a user's would be
    tests = folder / "test"
    tests.mkdir(exist_ok=True)
    for image, _ in files["test"]:
        link = tests / image.name
        if not link.exists():
            link.symlink_to(image)
    truths = [labels for _, labels in files["test"]]

    stores = {}
    for role in ("train", "val"):
        stores[role] = []
        for i, (image, labels) in enumerate(files[role]):
            store = folder / "preprocessed" / f"{role}_{i}.ome.zarr"
            run("preprocess", f"preprocess-{role}_{i}", "preprocess", image, store,
                "--labels", labels, output=store)
            stores[role].append(store)
    targets = []
    for i, store in enumerate(stores["train"]):
        target = folder / "targets" / f"train_{i}.zarr"
        run("targets", f"targets-train_{i}", "targets", store, target, "--sigma", SIGMA_PX,
            output=target)
        targets.append(target)

    def applied(name: str, model) -> dict:
        result = folder / "apply" / name
        run("apply", f"apply-{name}", "apply", model, tests, "--out", result,
            output=result / ".done")
        (result / ".done").write_text("applied\n")
        return score_folder(result / "labels", truths)

    rows = [{"domain": domain, "model": "starter", "start": "starter", "images": 0,
             **applied("zero-shot-starter", "starter")},
            {"domain": domain, "model": "demo", "start": "demo", "images": 0,
             **applied("zero-shot-demo", args.demo_model)}]
    for n in args.sizes:
        for start in STARTS:
            name = f"{start}-{n}"
            model = folder / "models" / name
            done = model / "benchmark.done"
            if not done.exists():
                run("train", f"train-{name}", "train", model,
                    "--train-images", *stores["train"][:n], "--train-targets", *targets[:n],
                    "--val-images", *stores["val"], "--iterations", args.iterations,
                    "--minutes", args.minutes, "--val-every", args.val_every,
                    "--select", "segmentation", "--patience", "null", "--seed", args.seed,
                    "--deterministic", "true",
                    *(["--init", "starter"] if start == "starter" else []))
                done.write_text("trained\n")
            tuned = model / "checkpoint_tuned.pt"
            run("tune", f"tune-{name}", "tune", model / "checkpoint_best.pt", tuned,
                "--params", model / "segment_params.yaml", "--val-images", *stores["val"],
                output=tuned)
            rows.append({"domain": domain, "model": name, "start": start, "images": n,
                         **applied(name, tuned)})
    return rows, run.seconds


def report(rows: list[dict], seconds: dict, args) -> tuple[str, dict]:
    lines = ["| domain | model | training images | AP@0.5 | AP@0.7 | AP@0.9 | mean AP |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        what = {"starter": "starter, zero-shot", "demo": "demo's model, zero-shot"}.get(
            r["model"], f"{'fine-tuned from starter' if r['start'] == 'starter' else 'from scratch'}")
        lines.append(f"| {r['domain']} | {what} | {r['images']} | {r['ap_0.5']:.3f} | "
                     f"{r['ap_0.7']:.3f} | {r['ap_0.9']:.3f} | {r['mean_ap']:.3f} |")
    checks = {}
    for domain in args.domains:
        mine = {r["model"]: r for r in rows if r["domain"] == domain}
        one = min(args.sizes)
        ft, sc = mine[f"starter-{one}"], mine[f"scratch-{one}"]
        zs, demo = mine["starter"], mine["demo"]
        checks[domain] = {
            f"fine_tuned_beats_scratch_{one}": {k: ft[k] > sc[k] for k in
                                                ("ap_0.5", "ap_0.7", "ap_0.9", "mean_ap")},
            "starter_beats_demo_zero_shot": {k: zs[k] > demo[k] for k in
                                             ("ap_0.5", "ap_0.7", "ap_0.9", "mean_ap")},
        }
    lines += ["", "Checks (True = the first beats the second):", ""]
    for domain, c in checks.items():
        for name, values in c.items():
            lines.append(f"- {domain}: {name}: "
                         + ", ".join(f"{k} {v}" for k, v in values.items()))
    lines += ["", "Wall time per domain:", ""]
    for domain in args.domains:
        total = sum(seconds[domain].values())
        parts = ", ".join(f"{stage} {seconds[domain][stage]:.0f} s" for stage in STAGES)
        lines.append(f"- {domain}: {total:.0f} s ({parts})")
    return "\n".join(lines), checks


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default=None,
                        help=f"comma-separated 2D domains (default {','.join(DEFAULT_DOMAINS)})")
    parser.add_argument("--sizes", default=None, help="training-set sizes (default 1,2,4)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (3)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations of every run (600)")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="wall-clock cap per training run, meant not to bind (30)")
    parser.add_argument("--val-every", type=int, default=None, help="validate every N (100)")
    parser.add_argument("--demo-model", type=Path, default=Path("results/model/checkpoint_tuned.pt"),
                        help="the demo workflow's model (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke test; numbers mean nothing")
    args = parser.parse_args(argv)
    args.domains = [d.strip() for d in (args.domains or (
        "small-blurry" if args.quick else ",".join(DEFAULT_DOMAINS))).split(",") if d.strip()]
    for name in args.domains:
        try:
            options = domain_options(name)
        except ValueError as e:
            parser.error(str(e))
        if len(options["shape"]) != 2:
            parser.error(f"{name} is a 3D domain; the starter model is 2D")
    args.sizes = sorted({int(s) for s in (args.sizes or ("1" if args.quick else "1,2,4"))
                         .split(",")})
    args.n_test = args.n_test or (1 if args.quick else 3)
    args.iterations = args.iterations or (20 if args.quick else 600)
    args.val_every = args.val_every or (10 if args.quick else 100)
    args.shape = (96, 96) if args.quick else (256, 256)
    if not args.demo_model.is_file():
        parser.error(f"{args.demo_model} does not exist: run the demo workflow first "
                     "(snakemake --cores 2), or give --demo-model")
    args.demo_model = args.demo_model.resolve()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out, settings = work_folder(args, "curve-")
    from unetpipe.stages.predict import model_sha256

    rows, seconds = [], {}
    for domain in args.domains:
        t0 = time.perf_counter()
        new_rows, seconds[domain] = run_domain(domain, args, out)
        rows += new_rows
        print(f"{domain}: {time.perf_counter() - t0:.0f} s", flush=True)
    text, checks = report(rows, seconds, args)
    print()
    print(text)
    from unetpipe.nn.models import resolve_model

    results = {"settings": settings, "rows": rows, "checks": checks, "seconds": seconds,
               "models": {"starter": model_sha256(resolve_model("starter")),
                          "demo": model_sha256(args.demo_model)}}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"\nwritten: {out / 'results.json'}")


if __name__ == "__main__":
    main()
