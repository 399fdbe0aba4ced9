"""The ``unetpipe`` command line: one subcommand per pipeline stage.

Each subcommand only parses arguments, loads, calls a library function and
writes; the Snakemake rules call these. Configuration options are config keys
(see ``workflow/schemas/config.schema.yaml``): each can be given as an option,
or all of them through ``--configfile``.

Errors caused by the input (a bad file, a wrong config value) are printed as
one line naming the file or key, and the exit status is 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

from . import __version__
from .core.config import add_config_options, config_from_args
from .core.errors import ConfigError, InputError, UnetpipeError

log = logging.getLogger("unetpipe")

PREPROCESS_KEYS = (
    "data.axes", "data.spacing", "data.channels",
    "preprocess.percentiles", "preprocess.clip", "preprocess.sample_size",
    "preprocess.chunks", "preprocess.pyramid_levels", "io.ngff_version",
)
TARGETS_KEYS = ("targets.mode", "targets.w0", "targets.sigma", "targets.class_balance")
MODEL_KEYS = ("model.depth", "model.features", "model.padding", "model.norm", "model.dropout",
              "model.anisotropic")
# the segmentation settings, which training validates with and tune starts from
SEGMENT_SETTINGS = (
    "segment.method", "segment.threshold", "segment.foreground", "segment.grow",
    "segment.seeds", "segment.h", "segment.min_size", "segment.max_size", "segment.fill_holes",
)
TRAIN_KEYS = (
    *MODEL_KEYS,
    "train.init", "train.iterations", "train.minutes", "train.batch_size", "train.patch",
    "train.foreground", "train.optimizer", "train.lr", "train.momentum", "train.weight_decay", "train.schedule",
    "train.warmup", "train.dice", "train.val_every", "train.select", "train.patience",
    "train.val_fraction",
    "train.checkpoint_every", "train.seed", "train.device", "train.bf16", "train.compile",
    "train.deterministic", "train.resume",
    "augment.elastic", "augment.elastic_sigma", "augment.elastic_grid",
    "augment.elastic_probability", "augment.flip", "augment.rot90", "augment.scale",
    "augment.shift", "augment.gamma", "augment.noise",
    *SEGMENT_SETTINGS,
)
# train takes the segment settings as --segment-NAME (train.foreground is --foreground)
TRAIN_QUALIFIED = SEGMENT_SETTINGS
PREDICT_KEYS = (
    "predict.block", "predict.halo", "predict.halo_tolerance", "predict.batch_size",
    "predict.device", "predict.bf16",
    "predict.tta", "predict.skip_empty", "predict.dtype", "predict.workers",
    "predict.scheduler", "predict.address", "predict.processes", "predict.resume",
    "io.ngff_version",
)
SEGMENT_KEYS = (
    *SEGMENT_SETTINGS,
    "segment.block", "segment.halo", "segment.resume",
    "segment.scheduler", "segment.address", "segment.processes", "io.ngff_version",
)
TUNE_KEYS = (
    "tune.objective", "tune.windows", "tune.window", *SEGMENT_SETTINGS,
    "predict.block", "predict.halo", "predict.halo_tolerance", "predict.batch_size",
    "predict.device", "predict.bf16", "predict.tta",
)
# apply: the model's run on raw images; the model sets the normalisation
APPLY_PREDICT = ("block", "halo", "halo_tolerance", "batch_size", "device", "bf16", "tta",
                 "skip_empty", "dtype")
APPLY_KEYS = (
    "data.axes", "data.spacing", "data.channels", *SEGMENT_SETTINGS,
    "predict.block", "predict.halo", "predict.halo_tolerance", "predict.batch_size",
    "predict.device", "predict.tta", "io.ngff_version",
)
# the Dask cluster of SLURM jobs that predict and segment use with scheduler
# slurm; the rules pass these only then
DASK_SLURM_KEYS = (
    "dask_slurm.jobs", "dask_slurm.cores", "dask_slurm.processes_per_job",
    "dask_slurm.memory", "dask_slurm.walltime", "dask_slurm.queue", "dask_slurm.account",
    "dask_slurm.job_extra_directives", "dask_slurm.job_script_prologue",
    "dask_slurm.local_directory", "dask_slurm.python", "dask_slurm.interface",
)
SYNTH_KEYS = (
    "demo.dir", "demo.ndim", "demo.seed", "demo.n_train", "demo.n_val", "demo.n_predict",
    "demo.train_shape", "demo.predict_shape", "demo.spacing",
)


def _duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``, for the summary lines."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _rate(voxels: float, seconds: float) -> str:
    """Throughput in voxels per second, with an SI prefix."""
    per_second = voxels / seconds if seconds > 0 else 0.0
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= factor:
            return f"{per_second / factor:.3g} {prefix}voxels/s"
    return f"{per_second:.3g} voxels/s"


def _set_threads(threads: int | None) -> None:
    import dask

    if threads:
        dask.config.set(scheduler="threads", num_workers=threads)


# --- subcommands ----------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> None:
    from .inputs.demo import write_demo

    cfg = config_from_args(args)["demo"]
    files = write_demo(cfg["dir"], ndim=cfg["ndim"], seed=cfg["seed"], n_train=cfg["n_train"],
                       n_val=cfg["n_val"], n_predict=cfg["n_predict"],
                       train_shape=cfg["train_shape"], predict_shape=cfg["predict_shape"],
                       spacing=cfg["spacing"], progress=not args.quiet)
    log.info("synth: wrote %d files (%d images with labels) to %s", len(files), len(files) // 2,
             cfg["dir"])


def cmd_preprocess(args: argparse.Namespace) -> None:
    from .inputs.samples import sample_name
    from .stages.preprocess import preprocess_file

    cfg = config_from_args(args)
    _set_threads(args.threads)
    pre = cfg["preprocess"]
    result = preprocess_file(
        args.image, args.output, labels_path=args.labels, axes=cfg["data"]["axes"],
        spacing=cfg["data"]["spacing"], channels=cfg["data"]["channels"],
        percentiles=pre["percentiles"], clip=pre["clip"], sample_size=pre["sample_size"],
        chunks=pre["chunks"], pyramid_levels=pre["pyramid_levels"],
        name=sample_name(args.image), ngff_version=cfg["io"]["ngff_version"],
        progress=not args.quiet,
    )
    labels = f"; labels up to id {result.n_labels_max}" if result.n_labels_max else ""
    log.info(
        "preprocess: %s -> %s: shape %s (%s), spacing %s, p_low %s, p_high %s%s; %s in %s",
        args.image, args.output, "x".join(map(str, result.shape)), result.axes,
        list(result.spacing), [round(v, 4) for v in result.low],
        [round(v, 4) for v in result.high], labels,
        _rate(math.prod(result.shape), result.seconds), _duration(result.seconds),
    )


def cmd_targets(args: argparse.Namespace) -> None:
    from .stages.targets import write_targets

    cfg = config_from_args(args)["targets"]
    _set_threads(args.threads)
    result = write_targets(args.store, args.output, mode=cfg["mode"], w0=cfg["w0"],
                           sigma=cfg["sigma"], class_balance=cfg["class_balance"],
                           threads=args.threads, progress=not args.quiet)
    counts = ", ".join(f"{c}" for c in result.class_counts)
    weights = ", ".join(f"{w:.3g}" for w in result.class_weights)
    log.info("targets: %s -> %s: shape %s, %s, pixels per class [%s], class weights [%s], "
             "largest weight %.3g; %s in %s", args.store, args.output,
             "x".join(map(str, result.shape)), cfg["mode"], counts, weights, result.weight_max,
             _rate(math.prod(result.shape), result.seconds), _duration(result.seconds))


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .stages.train import train_model

    cfg = config_from_args(args)
    if len(args.train_images) != len(args.train_targets):
        raise ConfigError(f"--train-images has {len(args.train_images)} stores but "
                          f"--train-targets has {len(args.train_targets)}; give one targets "
                          "store per image, in the same order")
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = list(zip(args.train_images, args.train_targets, strict=True))
    result = train_model(pairs, args.val_images or [], args.output, config=cfg,
                         progress=not args.quiet)
    best = ("no validation images; kept the last weights" if result.best_ap is None else
            f"best validation AP@0.5 {result.best_ap:.3f}"
            + ("" if result.best_mean_ap is None else f", mean AP {result.best_mean_ap:.3f}")
            + f" at iteration {result.best_iteration}")
    log.info("train: %s: %d iterations (%d this run, stopped by the %s budget) on %s, "
             "final loss %s; %s; %.2f it/s in %s", args.output, result.iterations,
             result.iterations - result.start_iteration, result.stopped_by, result.device,
             "n/a" if result.final_loss is None else f"{result.final_loss:.4f}", best,
             result.iterations_per_second, _duration(result.seconds))


def cmd_tune(args: argparse.Namespace) -> None:
    from .core.cluster import Execution
    from .stages.tune import tune_checkpoint

    config = config_from_args(args)
    cfg, pcfg = config["tune"], config["predict"]
    run = tune_checkpoint(
        args.checkpoint, args.output, params_path=args.params, val_stores=args.val_images,
        train_stores=args.train_images, section=config["segment"], objective=cfg["objective"],
        windows=cfg["windows"], window=cfg["window"],
        predict={k: pcfg[k] for k in ("block", "halo", "halo_tolerance", "batch_size",
                                      "device", "bf16", "tta")},
        execution=Execution(threads=args.threads, progress=not args.quiet),
        progress=not args.quiet)
    r, p = run.result, run.result.params
    chosen = (f"{p.method}" + (f" ({p.seeds} seeds)" if p.method == "watershed" else "")
              + f", threshold {p.threshold:g}, foreground {p.foreground:g}"
              + (f", grow {p.grow}" if p.method == "components" else "")
              + (f", h {p.h:g}" if p.method == "watershed" and p.seeds == "distance" else "")
              + f", min_size {p.min_size:g}")
    log.info("tune: %s -> %s: %s on %s (%s): %s %.3f, built-in defaults %.3f (%+.3f); %d "
             "settings tried in %s", args.checkpoint, args.output, chosen,
             ", ".join(run.validation), run.held_out, r.objective, r.score, r.defaults_score,
             r.gain, r.n_tried, _duration(r.seconds))


def _segment_params(args: argparse.Namespace, cfg: dict):
    """The settings to segment with: the config's, else the tuned ones (--params, or
    those the probability store carries), else the built-in defaults; logged."""
    from .stages.tune import read_tuned, segment_settings, tuned_of_store

    if args.params:
        tuned, where = read_tuned(args.params), args.params
        if tuned is None:
            raise InputError(args.params, "holds no tuned segmentation settings; run "
                                          "`unetpipe tune` to make them")
    else:
        tuned, where = tuned_of_store(args.probabilities), args.probabilities
    return segment_settings(cfg, tuned, where)


def _execution(args: argparse.Namespace, config: dict, stage: str):
    """How a chunked stage runs, from its config section and the command line."""
    from .core.cluster import Execution

    cfg = config[stage]
    return Execution(threads=args.threads, workers=cfg.get("workers"),
                     scheduler=cfg["scheduler"], address=cfg["address"],
                     processes=cfg["processes"], dask_slurm=config["dask_slurm"],
                     resume=cfg["resume"], progress=not args.quiet)


def cmd_predict(args: argparse.Namespace) -> None:
    from .stages.predict import predict_store

    config = config_from_args(args)
    cfg = config["predict"]
    result = predict_store(
        args.checkpoint, args.store, args.output, block=cfg["block"], halo=cfg["halo"],
        batch_size=cfg["batch_size"], device=cfg["device"], bf16=cfg["bf16"], tta=cfg["tta"],
        skip_empty=cfg["skip_empty"], dtype=cfg["dtype"],
        execution=_execution(args, config, "predict"),
        ngff_version=config["io"]["ngff_version"], halo_tolerance=cfg["halo_tolerance"],
    )
    log.info("predict: %s: shape %s, classes %s, %d blocks of %s (%d computed, %d skipped as "
             "empty, %d done before) on %s; %s in %s", result.output,
             "x".join(map(str, result.shape)), ", ".join(result.classes), result.blocks,
             "x".join(map(str, result.block)), result.computed, result.skipped, result.resumed,
             result.device, _rate(result.voxels_per_second, 1.0), _duration(result.seconds))


def cmd_segment(args: argparse.Namespace) -> None:
    from .stages.segment import segment_store

    t0 = time.perf_counter()
    config = config_from_args(args)
    cfg = config["segment"]
    if args.image:  # before any work: the table's intensities come from it
        from .io.images import read_image

        image, probs = read_image(args.image), read_image(args.probabilities)
        if image.spatial_shape != probs.spatial_shape:
            raise InputError(args.image, f"has spatial shape {image.spatial_shape}, but the "
                                         f"probabilities {args.probabilities} have "
                                         f"{probs.spatial_shape}")
    params, settings = _segment_params(args, cfg)
    result = segment_store(args.probabilities, args.output, params=params, block=cfg["block"],
                           halo=cfg["halo"], execution=_execution(args, config, "segment"),
                           ngff_version=config["io"]["ngff_version"])
    log.info("segment: settings %s", settings)
    if args.table:
        from .stages.measure import measure_store, write_table

        t1 = time.perf_counter()
        table = measure_store(args.output, image_path=args.image,
                              probabilities_path=args.probabilities, threads=args.threads,
                              progress=not args.quiet)
        write_table(table, args.table)
        log.info("measure: %s -> %s: %d objects, %d columns, %.1f s", args.output, args.table,
                 len(table), len(table.columns), time.perf_counter() - t1)
    seconds = time.perf_counter() - t0
    log.info("segment: %s: shape %s, %d objects (%s ids), %d blocks (%d done before), "
             "%d merges across blocks%s; %s in %s", result.output,
             "x".join(map(str, result.shape)), result.objects, result.dtype, result.blocks,
             result.resumed, result.merges, ", measured" if args.table else "",
             _rate(math.prod(result.shape), seconds), _duration(seconds))


def cmd_apply(args: argparse.Namespace) -> None:
    from .nn.models import resolve_model
    from .stages.apply import apply_images

    config = config_from_args(args)
    _set_threads(args.threads)
    result = apply_images(
        resolve_model(args.model), args.inputs, args.out, section=config["segment"],
        predict={k: config["predict"][k] for k in APPLY_PREDICT},
        data={k: config["data"][k] for k in ("axes", "spacing", "channels")},
        tiff=args.tiff, probabilities=args.probabilities, keep_work=args.keep_work,
        execution=_execution(args, config, "predict"), progress=not args.quiet,
        ngff_version=config["io"]["ngff_version"])
    total = len(result.images) + len(result.failures)
    log.info("apply: %s: %d of %d image(s) segmented, %d skipped (done before), %d failed; "
             "%d objects in all; in %s", args.out, len(result.done), total,
             len(result.skipped), len(result.failures),
             sum(r.objects for r in result.images), _duration(result.seconds))
    if result.failures:
        raise UnetpipeError(f"{len(result.failures)} of {total} image(s) failed (see the lines "
                            f"above); the other {total - len(result.failures)} are done")


def cmd_info(args: argparse.Namespace) -> None:
    import json

    from .nn.models import load_checkpoint
    from .report.describe import checkpoint_info, format_info

    info = checkpoint_info(load_checkpoint(args.checkpoint), path=args.checkpoint)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .inputs.samples import sample_name
    from .io.images import read_labels
    from .stages.evaluate import evaluate_store, write_metrics

    t0 = time.perf_counter()
    truth = args.truth
    gt = os.path.join(truth, "labels", "gt")
    if os.path.isdir(gt):  # a preprocessed store: its ground truth
        truth = gt
    elif "low" in _unetpipe_attrs(truth):
        raise InputError(truth, "is a preprocessed image without ground-truth labels "
                                "(labels/gt); give the labels, or a store preprocessed with "
                                "them")
    scores = evaluate_store(args.labels, truth, threads=args.threads,
                            progress=None if args.quiet else "evaluate")
    write_metrics(args.output, scores, sample=args.sample or sample_name(args.labels),
                  extra={"labels": os.path.abspath(args.labels), "truth": os.path.abspath(truth)})
    tp, fp, fn = scores.counts(0.5)
    seconds = time.perf_counter() - t0
    voxels = math.prod(read_labels(args.labels).data.shape)  # lazy: the shape only
    log.info("evaluate: %s vs %s: %d true, %d predicted objects; at IoU 0.5 TP %d FP %d FN %d, "
             "AP %.3f, F1 %.3f; mean AP %.3f, PQ %.3f, SEG %.3f -> %s; %s in %s", args.labels,
             truth, scores.n_true, scores.n_pred, tp, fp, fn, scores.ap(0.5), scores.f1(0.5),
             scores.mean_ap, scores.panoptic_quality, scores.seg, args.output,
             _rate(voxels, seconds), _duration(seconds))


def cmd_summarize(args: argparse.Namespace) -> None:
    from .stages.evaluate import summarize

    table = summarize(args.metrics, args.output)
    pooled = table.iloc[-1]
    log.info("summarize: %d sample(s) -> %s; pooled F1 %.3f, mean AP %.3f",
             len(table) - 1, args.output, pooled["f1"], pooled["mean_ap"])


def cmd_export(args: argparse.Namespace) -> None:
    from .nn.bioimageio import export_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = export_model(args.checkpoint, args.output, image=args.image, name=args.name,
                          description=args.description, authors=args.author,
                          license=args.license, weights=args.weights,
                          test_shape=args.test_shape, validate=not args.no_validate)
    log.info("export: %s -> %s: weights %s, test input %s; %s; in %s", args.checkpoint,
             result.output, ", ".join(result.weight_formats), "x".join(map(str, result.test_shape)),
             result.validation, _duration(result.seconds))


def _unetpipe_attrs(path: str) -> dict:
    """The ``unetpipe`` attributes of a Zarr group ({} for anything else)."""
    import zarr

    try:
        return dict(zarr.open_group(path, mode="r").attrs.get("unetpipe", {}))
    except Exception:
        return {}


def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    from .core.config import load_config
    from .inputs.samples import sample_table

    cfg = load_config(args.configfile)
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    if args.samples:
        print("# samples")
        for s in sample_table(cfg).values():
            print(f"# {s.name}: {','.join(s.roles)}  {s.image}  labels={s.labels}")


def cmd_view(args: argparse.Namespace) -> None:
    try:
        import napari
    except ImportError:
        raise UnetpipeError("unetpipe view needs napari: pip install 'unetpipe[napari]'") \
            from None
    from napari.settings import get_settings

    from .plugin.reader import napari_get_reader, prefer_unetpipe

    for path in args.paths:
        if not os.path.exists(path):
            raise InputError(path, "not found")
    folders = [p for p in args.paths if os.path.isdir(p) and napari_get_reader(p) is not None]
    settings = get_settings()
    added = prefer_unetpipe(folders, settings=settings)
    settings.save()
    log.info("view: napari now opens these with unetpipe (its reader preferences, in %s): %s",
             settings.config_path, ", ".join(added))
    if args.no_viewer:
        return
    viewer = napari.Viewer()
    for path in args.paths:
        viewer.open(path, plugin=None)  # napari picks the reader, by the preferences
    napari.run()


def cmd_report(args: argparse.Namespace) -> None:
    import json

    from .report import figures as report

    what = args.report_command
    if what == "overlay":
        out = report.write_overlay(args.image, args.labels, args.output, truth_path=args.truth,
                                   metrics_path=args.metrics, sample=args.sample,
                                   crop=args.crop)
    elif what == "weightmap":
        out = report.write_weightmap(args.targets, args.image, args.output, crop=args.crop,
                                     sample=args.sample)
    elif what == "runtimes":
        try:
            templates = report.parse_templates(args.rule)
        except ValueError as e:
            raise ConfigError(f"--rule: {e}") from None
        table = report.write_runtimes(args.benchmarks, args.html, args.png, templates=templates)
        out = f"{args.html}, {args.png} ({len(table)} rules, {int(table['jobs'].sum())} jobs)"
    elif what == "metrics":
        out = report.write_metrics_html(args.summary, args.output)
    elif what == "tune":
        from .stages.tune import read_tuned

        tuned = read_tuned(args.params)
        if tuned is None:
            raise InputError(args.params, "holds no tuned segmentation settings")
        out = report.write_tune_html(tuned, args.output)
    else:
        from .core.config import load_config

        try:
            cfg = json.loads(args.json) if args.json else load_config(args.configfile)
        except ValueError as e:
            raise ConfigError(f"--json: not a JSON object ({e})") from None
        out = report.write_config_html(cfg, args.output)
    log.info("report %s: wrote %s", what, out)


# --- parser -----------------------------------------------------------------------


def _writes(p: argparse.ArgumentParser, outputs: Callable) -> None:
    """Declare what a command writes: ``outputs(args)`` lists ``(path, kind, inputs,
    partial)`` for each output (see :func:`unetpipe.io.outputs.claim_output`), checked
    and locked before the command runs. Gives the command ``--overwrite``."""
    p.add_argument("--overwrite", action="store_true",
                   help="Replace an existing output even when it is not a unetpipe output of "
                        "the same kind (an output that is, or is inside, an input is "
                        "refused all the same).")
    p.set_defaults(outputs=outputs)


def _partial(path: str) -> str:
    from .io.resume import partial_path

    return os.fspath(partial_path(path))


def _claims(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """Check and lock every output of the command (one writer per output)."""
    from .io.outputs import claim_output

    for path, kind, inputs, partial in getattr(args, "outputs", lambda a: [])(args):
        stack.enter_context(claim_output(path, kind=kind, inputs=inputs, partial=partial,
                                         overwrite=args.overwrite))


def _add_common(p: argparse.ArgumentParser, *, configfile: bool = True) -> None:
    if configfile:
        p.add_argument("--configfile", metavar="YAML",
                       help="Config file to take options from (the command-line options win).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetpipe",
        description="Segment cells and nuclei in microscopy images and stacks with a U-Net. "
                    "The Snakemake workflow chains these commands; run them by hand to "
                    "process single files. 'unetpipe COMMAND --help' lists a command's "
                    "options.",
        epilog="Every configuration option of a command is a key of the workflow's "
               "config.yaml (its help names the key and the default); the same values "
               "can come from a config file with --configfile, and options given on the "
               "command line win. Keys only the workflow uses: data.train, data.val, "
               "data.predict (images and labels), data.curated, results, "
               "predict.checkpoint, tune.enabled. 'unetpipe config' prints every key with its value.",
    )
    parser.add_argument("--version", action="version", version=f"unetpipe {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="Show tracebacks and debug messages.")
    parser.add_argument("--log", metavar="FILE",
                        help="Also write messages and progress to this file (used by the "
                             "workflow's rules); the terminal then shows warnings and errors.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress bars.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="Generate the synthetic demo data set (TIFF images "
                                     "with instance labels).",
                       description="Generate synthetic nuclei images with exact instance "
                                   "labels: training, validation and prediction images.")
    _add_common(p)
    add_config_options(p, SYNTH_KEYS)
    _writes(p, lambda a: [(config_from_args(a)["demo"]["dir"], "demo", [], None)])
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("preprocess", help="Normalise an image into a chunked OME-Zarr store.",
                       description="Read an image lazily (TIFF, Zarr, OME-Zarr), normalise it "
                                   "by percentiles to float32 and write it as OME-Zarr with a "
                                   "pyramid; instance labels, if given, are checked and stored "
                                   "as the image-label 'gt'.")
    p.add_argument("image", help="Input image (TIFF, Zarr or OME-Zarr).")
    p.add_argument("output", help="Output store, e.g. results/preprocessed/NAME.ome.zarr.")
    p.add_argument("--labels", metavar="PATH", help="Instance labels of the image.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="Worker threads (default: one per core).")
    _add_common(p)
    add_config_options(p, PREPROCESS_KEYS)
    _writes(p, lambda a: [(a.output, "preprocessed", [a.image, a.labels], None)])
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("targets", help="Training targets and separation weight map of a "
                                       "preprocessed image's labels.",
                       description="Compute the training targets (background with separation "
                                   "gaps between touching cells, cell; or background, interior, "
                                   "boundary) and the U-Net paper's weight map (class balance "
                                   "plus the border term) from a preprocessed store's "
                                   "ground-truth labels, blockwise.")
    p.add_argument("store", help="Preprocessed store with labels/gt, e.g. "
                                 "results/preprocessed/NAME.ome.zarr.")
    p.add_argument("output", help="Output Zarr group, e.g. results/targets/NAME.zarr.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="Worker threads (default: one per core).")
    _add_common(p)
    add_config_options(p, TARGETS_KEYS)
    _writes(p, lambda a: [(a.output, "targets", [a.store], None)])
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("train", help="Train the U-Net on preprocessed images and their targets.",
                       description="Train the U-Net with the weighted cross-entropy of the "
                                   "paper on random, augmented patches; validate on whole "
                                   "images (AP at IoU 0.5); write checkpoint_best.pt, "
                                   "checkpoint_last.pt, history.csv and training_curves.png to "
                                   "OUTPUT. A run started again resumes from "
                                   "checkpoint_last.pt when its settings and data are "
                                   "unchanged.")
    p.add_argument("output", help="Output folder, e.g. results/model.")
    p.add_argument("--train-images", nargs="+", required=True, metavar="STORE",
                   help="Preprocessed stores of the training images.")
    p.add_argument("--train-targets", nargs="+", required=True, metavar="STORE",
                   help="Their targets stores, in the same order.")
    p.add_argument("--val-images", nargs="*", default=[], metavar="STORE",
                   help="Preprocessed stores (with labels/gt) of the validation images.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="Torch CPU threads (default: one per core).")
    _add_common(p)
    add_config_options(p, TRAIN_KEYS, qualified=TRAIN_QUALIFIED)
    _writes(p, lambda a: [(a.output, "model",
                           [*a.train_images, *a.train_targets, *a.val_images], None)])
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="Class probabilities of a preprocessed image, block by "
                                       "block, resumably.",
                       description="Predict the class probabilities of a preprocessed "
                                   "OME-Zarr store with a trained checkpoint: overlap-tile "
                                   "inference block by block (the output chunks), each from "
                                   "the block plus a halo covering the network's receptive "
                                   "field, mirror-padded at the border, so the result does not "
                                   "depend on the block size. Memory depends on the block and "
                                   "the number of workers, not on the image. The output is "
                                   "built in the hidden store .OUTPUT.partial and renamed to "
                                   "OUTPUT when complete; a killed run started again with the "
                                   "same arguments predicts only the blocks still missing.")
    p.add_argument("checkpoint", help="Checkpoint, e.g. results/model/checkpoint_best.pt, or "
                                      "starter (the model that comes with unetpipe).")
    p.add_argument("store", help="Preprocessed store, e.g. results/preprocessed/NAME.ome.zarr.")
    p.add_argument("output", help="Output store, e.g. results/probabilities/NAME.ome.zarr.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU cores to use (default: all), shared among the Dask threads "
                        "as torch threads.")
    _add_common(p)
    add_config_options(p, (*PREDICT_KEYS, *DASK_SLURM_KEYS))
    _writes(p, lambda a: [(a.output, "probabilities", [a.store, a.checkpoint],
                           _partial(a.output))])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("segment", help="Instance labels from class probabilities, block by "
                                       "block, stitched; and a table of the objects.",
                       description="Turn the class probabilities of a store into instance "
                                   "labels: connected components of the cell (interior) class "
                                   "grown back over the separation ring, or a watershed from "
                                   "seeds; then the size range and hole filling. Each block is "
                                   "segmented with a halo, objects are merged across block "
                                   "faces, edges and corners by what the blocks see in common, "
                                   "and the labels are written with consecutive ids (uint32, or "
                                   "uint64 when needed). Memory depends on the block, not on "
                                   "the image; a killed run resumes. With --table, a CSV of "
                                   "per-object measurements is written as well.")
    p.add_argument("probabilities", help="Probability store, e.g. "
                                         "results/probabilities/NAME.ome.zarr.")
    p.add_argument("output", help="Output label store, e.g. results/labels/NAME.ome.zarr.")
    p.add_argument("--table", metavar="CSV",
                   help="Also write per-object measurements, e.g. results/tables/NAME.csv.")
    p.add_argument("--params", metavar="FILE",
                   help="Tuned settings to use for every setting left at null: a "
                        "segment_params.yaml or a checkpoint written by `unetpipe tune` "
                        "(default: the ones the probability store carries from the "
                        "checkpoint that predicted it, if any).")
    p.add_argument("--image", metavar="STORE",
                   help="Preprocessed store, for the table's intensities.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="Worker threads (default: one per core).")
    _add_common(p)
    add_config_options(p, (*SEGMENT_KEYS, *DASK_SLURM_KEYS))
    _writes(p, lambda a: [(a.output, "labels", [a.probabilities, a.image], _partial(a.output))]
            + ([(a.table, "table", [a.probabilities, a.image, a.output], None)]
               if a.table else []))
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("apply", help="Segment raw images with a trained model in one "
                                     "command: labels and a table per image.",
                       description="Preprocess (with the percentiles the model was trained "
                                   "with), predict, segment and measure every image, as "
                                   "`unetpipe preprocess`, `predict` and `segment` would one "
                                   "by one: OUT/labels/NAME.ome.zarr and OUT/tables/NAME.csv "
                                   "per image (with --tiff also OUT/labels/NAME.tif, with "
                                   "--probabilities OUT/probabilities/NAME.ome.zarr). The "
                                   "segmentation settings not given take the model's tuned "
                                   "ones, else the built-in defaults. Work in progress stays "
                                   "in OUT/.work until an image is done; a run started again "
                                   "skips the finished images and resumes the others. An "
                                   "image that cannot be read or does not fit the model is "
                                   "named in one line and skipped, and the run exits with "
                                   "status 1 at the end.")
    p.add_argument("model", metavar="MODEL",
                   help="Trained model: a checkpoint (.pt), a bioimage.io package (.zip) "
                        "written by `unetpipe export`, or starter (the model that comes with "
                        "unetpipe; see `unetpipe info starter`).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="Images (TIFF, Zarr, OME-Zarr; 2D or 3D), glob patterns, or folders "
                        "(their *.tif, *.tiff, *.zarr and *.ome.zarr).")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="Output folder (it may not hold an input).")
    p.add_argument("--tiff", action="store_true", help="Also write the labels as TIFF.")
    p.add_argument("--probabilities", action="store_true",
                   help="Keep the class probabilities (OUT/probabilities/NAME.ome.zarr).")
    p.add_argument("--keep-work", action="store_true",
                   help="Keep the preprocessed images (OUT/.work) of finished images.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU cores to use (default: all).")
    _add_common(p)
    add_config_options(p, APPLY_KEYS)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("tune", help="Calibrate the segmentation settings of a model on "
                                    "validation images.",
                       description="Predict the validation images with the model, search the "
                                   "segmentation settings (method and seeds, threshold, "
                                   "foreground, grow, h, min_size) for the best objective "
                                   "against their labels (default: mean AP over IoU "
                                   "0.5:0.95), and write the model with the chosen settings "
                                   "stored in it (OUTPUT) and, with --params, as YAML. Without "
                                   "--val-images, it tunes on the part of --train-images that "
                                   "training held out. `unetpipe segment` uses the tuned "
                                   "settings for every setting the config leaves at null. See "
                                   "README, 'Calibrating to your data'.")
    p.add_argument("checkpoint", help="Trained model, e.g. results/model/checkpoint_best.pt.")
    p.add_argument("output", help="Checkpoint to write, e.g. "
                                  "results/model/checkpoint_tuned.pt.")
    p.add_argument("--params", metavar="YAML",
                   help="Also write the settings, e.g. results/model/segment_params.yaml.")
    p.add_argument("--val-images", nargs="*", default=[], metavar="STORE",
                   help="Preprocessed stores with labels (labels/gt) to tune on.")
    p.add_argument("--train-images", nargs="*", default=[], metavar="STORE",
                   help="Without --val-images: the training images' stores; the ones "
                        "training held out (recorded in the checkpoint) are tuned on.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU cores to use (default: all).")
    _add_common(p)
    add_config_options(p, TUNE_KEYS)
    _writes(p, lambda a: [(a.output, "checkpoint",
                           [a.checkpoint, *a.val_images, *a.train_images], None)]
            + ([(a.params, "segment_params", [a.checkpoint, *a.val_images, *a.train_images],
                 None)] if a.params else []))
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("info", help="Show what a checkpoint holds.",
                       description="Print what a checkpoint holds: the architecture (with its "
                                   "receptive field and the smallest input), the target "
                                   "classes and weight-map settings, the training data "
                                   "(samples, spacing, channels, normalisation), the training "
                                   "run and the validation metrics.")
    p.add_argument("checkpoint", help="Checkpoint, e.g. results/model/checkpoint_best.pt, or "
                                      "starter (the model that comes with unetpipe).")
    p.add_argument("--json", action="store_true", help="Print it as JSON.")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("evaluate", help="Score instance labels against ground truth.",
                       description="Match predicted and true objects one to one by IoU "
                                   "(optimal assignment, IoU >= t for t = 0.50, 0.55, ..., "
                                   "0.95) and write TP, FP, FN, precision, recall, F1, AP, "
                                   "mean AP, panoptic quality, mean matched IoU and the Cell "
                                   "Tracking Challenge's SEG as JSON. Chunk by chunk.")
    p.add_argument("labels", help="Predicted labels, e.g. results/labels/NAME.ome.zarr.")
    p.add_argument("truth", help="Ground-truth labels, or a preprocessed store with "
                                 "labels/gt.")
    p.add_argument("output", help="Output JSON, e.g. results/metrics/NAME.json.")
    p.add_argument("--sample", metavar="NAME", help="Sample name (default: from LABELS).")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="Worker threads (default: one per core).")
    _writes(p, lambda a: [(a.output, "metrics", [a.labels, a.truth], None)])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("summarize", help="Table of the evaluation of every sample, pooled.",
                       description="Collect per-sample metrics JSON files (from unetpipe "
                                   "evaluate) into a CSV with one row per sample and a final "
                                   "row 'pooled' (counts added over the samples).")
    p.add_argument("output", help="Output CSV, e.g. results/metrics/summary.csv.")
    p.add_argument("metrics", nargs="+", help="Metrics JSON files.")
    _writes(p, lambda a: [(a.output, "summary", a.metrics, None)])
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("export", help="Write a checkpoint as a bioimage.io model package "
                                      "(.zip).",
                       description="Export a trained checkpoint (same padding) to the "
                                   "bioimage.io model format: rdf.yaml, the weights as a state "
                                   "dict and as TorchScript, the preprocessing as bioimage.io "
                                   "operations (percentile scale_range, clip), a raw test input "
                                   "with the probabilities the model gives for it, a README and "
                                   "a cover image. When bioimageio.spec and bioimageio.core "
                                   "are installed, the package is validated and test-run "
                                   "before it is put in place. unetpipe predicts with the "
                                   "package as with the checkpoint (unetpipe predict "
                                   "model.zip ...).")
    p.add_argument("checkpoint", help="Checkpoint, e.g. results/model/checkpoint_best.pt, or "
                                      "starter (the model that comes with unetpipe).")
    p.add_argument("output", help="Package to write, e.g. results/model/model.zip.")
    p.add_argument("--image", metavar="PATH",
                   help="Raw image (TIFF, Zarr, OME-Zarr) to crop the test input from "
                        "(default: a synthetic nuclei image).")
    p.add_argument("--name", help="Model name (default: from the model and its classes).")
    p.add_argument("--description", help="One-line description of the model.")
    p.add_argument("--author", action="append", metavar="NAME",
                   help="Author name; repeat for several (default: the current user).")
    p.add_argument("--license", default="CC-BY-4.0", metavar="SPDX",
                   help="SPDX license identifier of the model (default: %(default)s).")
    p.add_argument("--weights", nargs="+", default=["pytorch_state_dict", "torchscript"],
                   choices=["pytorch_state_dict", "torchscript"], metavar="FORMAT",
                   help="Weight formats to include: pytorch_state_dict (always included), "
                        "torchscript (default: both).")
    p.add_argument("--test-shape", nargs="+", type=int, metavar="N",
                   help="Spatial shape of the test input, one value per axis, rounded down "
                        "to the network's pooling grid (default: 256 256, or 16 128 128 "
                        "in 3D).")
    p.add_argument("--no-validate", action="store_true",
                   help="Do not validate and test-run the package with bioimageio.core.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="Torch CPU threads (default: one per core).")
    _writes(p, lambda a: [(a.output, "package", [a.checkpoint, a.image], None)])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="Validate a config file and print it with defaults.",
                       description="Validate a config file against the schema and print the "
                                   "complete config, every default filled in.")
    p.add_argument("configfile", nargs="?", default=None,
                   help="Config file (default: the built-in defaults).")
    p.add_argument("--samples", action="store_true", help="Also list the sample table.")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("view", help="Open results in napari, and make napari open unetpipe's "
                                    "outputs with unetpipe's reader from now on.",
                       description="Add napari reader preferences under which napari opens "
                                   "every store of a results folder (preprocessed, "
                                   "probabilities, targets, labels), and each results or stage "
                                   "folder given, with unetpipe's reader, without the reader "
                                   "chooser: for 'napari PATH', drag and drop and File > Open "
                                   "as well. Then start napari with the paths given.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="Results folders, stage folders or stores to open.")
    p.add_argument("--no-viewer", action="store_true",
                   help="Only set the preferences; start no viewer.")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("report", help="Figures and tables for `snakemake --report`.",
                       description="Write one item of the workflow's report: a sample's "
                                   "outlines over its image (PNG), the weight-map figure (PNG), "
                                   "the runtime and memory of every rule (HTML and PNG), the "
                                   "evaluation table (HTML) or the config (HTML).")
    rsub = p.add_subparsers(dest="report_command", metavar="ITEM", required=True)
    r = rsub.add_parser("overlay", help="Predicted (and true) outlines over the image: the "
                                        "whole image, coarse, and a full-resolution crop.")
    r.add_argument("image", help="Preprocessed store, e.g. results/preprocessed/NAME.ome.zarr.")
    r.add_argument("labels", help="Label store, e.g. results/labels/NAME.ome.zarr.")
    r.add_argument("output", help="Output PNG.")
    r.add_argument("--truth", metavar="STORE", help="Ground-truth labels, e.g. "
                                                    "IMAGE/labels/gt.")
    r.add_argument("--metrics", metavar="JSON", help="The sample's metrics (unetpipe "
                                                     "evaluate), for the title.")
    r.add_argument("--sample", metavar="NAME", help="Name in the title.")
    r.add_argument("--crop", type=int, default=256, metavar="N",
                   help="Side of the full-resolution crop (default: 256).")
    _writes(r, lambda a: [(a.output, "figure", [a.image, a.labels, a.truth, a.metrics],
                           None)])
    r = rsub.add_parser("weightmap", help="A training sample's targets and weight map.")
    r.add_argument("targets", help="Targets store, e.g. results/targets/NAME.zarr.")
    r.add_argument("image", help="Its preprocessed store (with labels/gt).")
    r.add_argument("output", help="Output PNG.")
    r.add_argument("--sample", metavar="NAME", help="Name in the title.")
    r.add_argument("--crop", type=int, default=128, metavar="N",
                   help="Side of the crop (default: 128).")
    _writes(r, lambda a: [(a.output, "figure", [a.targets, a.image], None)])
    r = rsub.add_parser("runtimes", help="Wall time, CPU time and peak memory per rule, from "
                                         "Snakemake's benchmark files.")
    r.add_argument("benchmarks", help="Folder of benchmark TSV files, e.g. results/benchmarks.")
    r.add_argument("html", help="Output HTML table.")
    r.add_argument("png", help="Output PNG chart.")
    r.add_argument("--rule", nargs="*", default=[], metavar="RULE=PATH",
                   help="A rule's benchmark path with wildcards, e.g. "
                        "preprocess=results/benchmarks/preprocess/{sample}.tsv (default: the "
                        "rule is the file's folder, or its name).")
    _writes(r, lambda a: [(a.html, "figure", [a.benchmarks, a.png], None),
                          (a.png, "figure", [a.benchmarks, a.html], None)])
    r = rsub.add_parser("metrics", help="The evaluation summary as an HTML table.")
    r.add_argument("summary", help="summary.csv of unetpipe summarize.")
    r.add_argument("output", help="Output HTML.")
    _writes(r, lambda a: [(a.output, "figure", [a.summary], None)])
    r = rsub.add_parser("tune", help="The tuned segmentation settings as an HTML table.")
    r.add_argument("params", help="segment_params.yaml (or a tuned checkpoint).")
    r.add_argument("output", help="HTML file.")
    _writes(r, lambda a: [(a.output, "figure", [a.params], None)])
    r = rsub.add_parser("config", help="The resolved config as an HTML page.")
    r.add_argument("output", help="Output HTML.")
    r.add_argument("--json", metavar="TEXT", help="The config as JSON (the workflow passes its "
                                                  "validated config).")
    _add_common(r)
    _writes(r, lambda a: [(a.output, "figure", [a.configfile], None)])
    p.set_defaults(func=cmd_report)
    return parser


def _setup_logging(args: argparse.Namespace):
    """unetpipe's messages go to the terminal (or, with --log, to the log file,
    the terminal then showing only warnings and errors); other libraries'
    messages go to the log file only, so a bad input still ends in one line."""
    logger = logging.getLogger("unetpipe")
    logger.setLevel(logging.DEBUG if args.debug else logging.INFO)
    logger.propagate = False
    root = logging.getLogger()
    for lg in (logger, root):
        for h in list(lg.handlers):
            lg.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.WARNING if (args.log or args.quiet) and not args.debug
                     else logging.DEBUG)
    logger.addHandler(console)
    root.addHandler(console if args.debug else logging.NullHandler())
    log_file = None
    if args.log:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        log_file = open(args.log, "w", buffering=1)  # closed by main() when the run ends
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        root.addHandler(handler)
        from .core import progress

        progress.set_stream(log_file)
    return log_file


MODEL_ARGUMENTS = {"predict": "checkpoint", "tune": "checkpoint", "info": "checkpoint",
                   "export": "checkpoint", "apply": "model"}
"""The argument of each command that names a model, which may be a built-in one."""


def _builtin_models(args: argparse.Namespace) -> None:
    """A built-in model's name (``starter``) given for a model becomes its file."""
    from .nn.models import named_model

    name = MODEL_ARGUMENTS.get(args.command)
    if name:
        setattr(args, name, named_model(getattr(args, name, None)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetpipe`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log_file = _setup_logging(args)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        with contextlib.ExitStack() as stack:
            _builtin_models(args)
            _claims(args, stack)
            func(args)
    except UnetpipeError as e:
        if args.debug:
            raise
        for line in str(e).splitlines():
            log.error("unetpipe %s: error: %s", args.command, line)
        return 1
    except OSError as e:
        # Disk full, permission denied, a folder in the way: the user can fix these.
        if args.debug:
            raise
        log.error("unetpipe %s: error: %s", args.command, e)
        return 1
    except KeyboardInterrupt:
        log.error("unetpipe %s: interrupted", args.command)
        return 130
    finally:
        if log_file is not None:
            from .core import progress

            progress.set_stream(None)
            log_file.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
