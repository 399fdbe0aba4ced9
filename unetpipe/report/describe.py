"""What a checkpoint holds, for ``unetpipe info``.

:func:`checkpoint_info` gathers it as plain values (for ``--json``);
:func:`format_info` lays it out for reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def checkpoint_info(ckpt: Mapping, *, path: str | None = None) -> dict:
    """The description of a loaded checkpoint, as plain values.

    Parameters
    ----------
    ckpt : mapping
        A checkpoint from :func:`unetpipe.nn.checkpoint.load_checkpoint`.
    path : str, optional
        Where it was loaded from, recorded as ``file``.

    Returns
    -------
    dict
        ``file``, ``format``, ``created``, ``architecture`` (constructor
        arguments, parameter count, receptive field in pixels and in the
        training data's units, pooling grid, the smallest input),
        ``normalization``, ``targets``, ``training_data`` (samples, spacing,
        channels, patch), ``training`` (iterations, time, the settings that
        shape the result), and ``metrics`` (validation scores, and the best
        ones when the checkpoint is ``checkpoint_last.pt``).
    """
    from ..nn.checkpoint import build_model
    from ..nn.model import count_parameters

    spec = ckpt["model"]
    cfg = dict(spec["config"])
    model = build_model(ckpt)
    field = [int(v) for v in model.receptive_field()]
    data = dict(ckpt.get("data") or {})
    spacing = data.get("spacing")
    unit = data.get("unit") or ("pixel" if not spacing or set(spacing) == {1.0} else None)
    architecture = {
        "class": spec.get("class"),
        **cfg,
        "parameters": count_parameters(model),
        "receptive_field": field,
        "pooling_factor": [int(v) for v in model.pooling_factor()],
        "smallest_input": [int(v) for v in model.valid_input_shape([1] * cfg["ndim"])],
    }
    if spacing:
        architecture["receptive_field_physical"] = [round(f * s, 4)
                                                    for f, s in zip(field, spacing, strict=True)]
        architecture["unit"] = unit
    train_cfg = dict((ckpt.get("config") or {}).get("train") or {})
    training = {
        "iteration": ckpt.get("iteration"),
        "finished": ckpt.get("finished"),
        "seconds": ckpt.get("elapsed"),
        "fingerprint": ckpt.get("fingerprint"),
        **{k: train_cfg[k] for k in ("iterations", "minutes", "batch_size", "optimizer", "lr",
                                     "schedule", "seed") if k in train_cfg},
    }
    history = ckpt.get("history") or []
    if history:
        training["final_loss"] = history[-1].get("loss")
    metrics = {k: ckpt[k] for k in ("val_ap", "val_mean_ap", "val_iou", "val_select")
               if ckpt.get(k) is not None}
    best = ckpt.get("best")
    if isinstance(best, Mapping):
        metrics["best"] = {k: v for k, v in best.items() if k != "state_dict"}
    return {
        "file": path,
        "format": f"{ckpt.get('format')} v{ckpt.get('version')}",
        "created": ckpt.get("created"),
        "unetpipe_version": ckpt.get("unetpipe_version"),
        "torch_version": ckpt.get("torch_version"),
        "architecture": architecture,
        "normalization": dict(ckpt.get("normalization") or {}),
        "targets": dict(ckpt.get("targets") or {}),
        "training_data": data,
        "training": training,
        "metrics": metrics,
        "bioimageio": dict(ckpt["bioimageio"]) if ckpt.get("bioimageio") else None,
        "segmentation": dict(ckpt["segment_params"]) if ckpt.get("segment_params") else None,
        "starter": dict(ckpt["starter"]) if ckpt.get("starter") else None,
        "effective_halo": dict(ckpt["effective_halo"]) if ckpt.get("effective_halo") else None,
    }


def _shape(values) -> str:
    return " x ".join(str(v) for v in values)


def format_info(info: Mapping) -> str:
    """:func:`checkpoint_info` as text, one fact a line.

    Parameters
    ----------
    info : mapping
        The output of :func:`checkpoint_info`.

    Returns
    -------
    str
    """
    arch, data, norm = info["architecture"], info["training_data"], info["normalization"]
    targets, training, metrics = info["targets"], info["training"], info["metrics"]
    axes = "zyx"[3 - arch["ndim"]:]
    lines = [f"{info['file'] or 'checkpoint'}",
             f"  format          {info['format']}, written {info['created']} by unetpipe "
             f"{info['unetpipe_version']} (torch {info['torch_version']})",
             *([f"  bioimage.io     {info['bioimageio'].get('name')} (model format "
                f"{info['bioimageio'].get('format_version')})"] if info.get("bioimageio") else []),
             "architecture",
             f"  network         {arch['class']}, {arch['ndim']}D, depth {arch['depth']}, "
             f"{arch['features']} features at the top, padding {arch['padding']}, "
             f"norm {arch['norm']}, dropout {arch['dropout']:g}",
             f"  channels        {arch['in_channels']} in, {arch['out_channels']} out",
             f"  parameters      {arch['parameters']:,}",
             f"  pooling         {arch['pooling']} per level; inputs align to multiples of "
             f"{_shape(arch['pooling_factor'])} ({axes})",
             f"  receptive field {_shape(arch['receptive_field'])} pixels ({axes})"
             + (f" = {_shape(arch['receptive_field_physical'])} {arch['unit']}"
                if "receptive_field_physical" in arch and arch.get("unit") != "pixel" else ""),
             f"  smallest input  {_shape(arch['smallest_input'])}"]
    halo = info.get("effective_halo")
    if halo:
        lines.append(f"  halo (auto)     {_shape(halo.get('halo') or [])} pixels (exact "
                     f"{_shape(halo.get('exact') or [])}): probabilities within "
                     f"{halo.get('tolerance')} of whole-image prediction (largest change "
                     f"{float(halo.get('deviation') or 0):.2g}), measured on "
                     f"{halo.get('measured_on') or 'an image'}")
    elif arch.get("padding") == "same":
        lines.append("  halo (auto)     not measured yet: prediction measures it at first use")
    classes = targets.get("classes") or []
    lines += ["targets",
              f"  classes         {', '.join(classes)} ({targets.get('mode')})",
              f"  weight map      w0 {targets.get('w0')}, sigma {targets.get('sigma')}, "
              f"class balance {targets.get('class_balance')}"]
    spacing = data.get("spacing")
    lines += ["training data",
              f"  train           {len(data.get('train') or [])} image(s): "
              f"{_names(data.get('train'))}",
              f"  validation      {len(data.get('val') or [])} image(s): "
              f"{_names(data.get('val'))}",
              f"  channels        {data.get('channels')}",
              f"  spacing         {spacing} {data.get('unit') or ''}".rstrip(),
              f"  patch           {_shape(data['patch']) if data.get('patch') else 'n/a'}",
              f"  normalization   percentiles {norm.get('percentiles')}, clip "
              f"{norm.get('clip')}"]
    init = data.get("init")
    if isinstance(init, Mapping):
        lines.append(f"  started from    {init.get('model')} (train.init; sha256 "
                     f"{str(init.get('sha256'))[:12]})")
    seconds = training.get("seconds")
    lines += ["training",
              f"  iterations      {training.get('iteration')}"
              + (f" in {seconds / 60:.1f} min" if seconds else "")
              + f" (budget: {_budget(training)}; "
              + ("the run ended)" if training.get("finished") else "the run was still going)"),
              f"  optimizer       {training.get('optimizer')}, lr {training.get('lr')}, "
              f"{training.get('schedule')} schedule, batch {training.get('batch_size')}, "
              f"seed {training.get('seed')}"]
    if training.get("final_loss") is not None:
        lines.append(f"  final loss      {training['final_loss']:.4f}")
    lines.append("metrics (validation images)")
    if "val_ap" in metrics:
        lines.append(f"  at iteration {training.get('iteration')}: AP@0.5 "
                     f"{metrics['val_ap']:.3f}, mean matched IoU {_num(metrics.get('val_iou'))}")
    best = metrics.get("best")
    if best and best.get("ap") is not None:
        lines.append(f"  best: AP@0.5 {best['ap']:.3f} at iteration {best.get('iteration')}, "
                     f"mean matched IoU {_num(best.get('iou'))}")
    if "val_ap" not in metrics and not (best and best.get("ap") is not None):
        lines.append("  none (trained without validation images)")
    if metrics.get("val_mean_ap") is not None:
        lines.append(f"  kept by {metrics.get('val_select') or 'segmentation'}: mean AP "
                     f"{metrics['val_mean_ap']:.3f}")
    lines += _segmentation_lines(info.get("segmentation"))
    lines += _starter_lines(info.get("starter"))
    return "\n".join(lines)


def _starter_lines(recipe: Mapping | None) -> list[str]:
    """How a built-in model was made (the ``starter`` entry), for :func:`format_info`."""
    if not recipe:
        return []
    data, training = recipe.get("data") or {}, recipe.get("training") or {}
    validation, targets = recipe.get("validation") or {}, recipe.get("targets") or {}
    ranges = data.get("ranges") or {}
    drawn = ", ".join(f"{k} {lo:g}-{hi:g}" + (" (log)" if law == "log" else "")
                      for k, (law, lo, hi) in ranges.items())
    return [f"built-in model '{recipe.get('name')}'",
            f"  made by         {recipe.get('made_by')}, seed {data.get('seed')}",
            f"  data            {data.get('train_images')} training and "
            f"{data.get('val_images')} validation images of {_shape(data.get('shape') or [])}, "
            f"synthetic nuclei ({data.get('generator')}), each with its own domain settings "
            f"({data.get('domains')})",
            f"  drawn from      {drawn}",
            f"  targets         {targets.get('mode')}, w0 {targets.get('w0')}, sigma "
            f"{targets.get('sigma_px')} pixels",
            f"  training        {training.get('iterations')} iterations on "
            f"{training.get('device')} in {(training.get('seconds') or 0) / 60:.0f} min, kept "
            f"iteration {training.get('kept_iteration')}",
            f"  validation      AP@0.5 {_num(validation.get('ap_0.5'))}, mean AP "
            f"{_num(validation.get('mean_ap'))}; tuned settings mean AP "
            f"{_num(validation.get('tuned_mean_ap'))} (built-in "
            f"{_num(validation.get('defaults_mean_ap'))}), on the {validation.get('images')} "
            "validation images",
            f"  licence         {recipe.get('licence')}"]


def _segmentation_lines(tuned: Mapping | None) -> list[str]:
    """The tuned segmentation settings, for :func:`format_info`."""
    if not tuned:
        return ["segmentation", "  not tuned (segment uses the config's settings and the "
                                "built-in defaults; run `unetpipe tune`)"]
    p = tuned.get("params") or {}
    return ["segmentation (tuned by `unetpipe tune`)",
            f"  method          {p.get('method')}"
            + (f", {p.get('seeds')} seeds" if p.get("method") == "watershed" else ""),
            f"  threshold       {_num(p.get('threshold'))}, foreground "
            f"{_num(p.get('foreground'))}, grow {p.get('grow')}, h {_num(p.get('h'))}, "
            f"min_size {_num(p.get('min_size'))}",
            f"  score           {tuned.get('objective')} {_num(tuned.get('score'))} on "
            f"{_names(tuned.get('validation'))} (built-in defaults "
            f"{_num(tuned.get('defaults_score'))}; {tuned.get('n_tried')} settings tried)"]


def _budget(training: Mapping) -> str:
    parts = []
    if training.get("iterations"):
        parts.append(f"{training['iterations']} iterations")
    if training.get("minutes"):
        parts.append(f"{training['minutes']:g} min")
    return " or ".join(parts) or "none"


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def _names(names, limit: int = 6) -> str:
    names = list(names or [])
    if not names:
        return "-"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
