"""Export to, and import from, the bioimage.io model format (format version 0.5).

:func:`export_model` turns a unetpipe checkpoint into a bioimage.io model
package (a ``.zip``): the description ``rdf.yaml``, the weights as a plain
state dict and as TorchScript, a raw test input with the probabilities the
model gives for it, documentation and a cover image. The package's
``config.unetpipe`` keeps the checkpoint's self-description, so that
:func:`import_model` can turn the package back into a checkpoint:
``unetpipe predict model.zip ...`` and ``predict.checkpoint: model.zip``
work as with a ``.pt`` checkpoint.

The YAML is written here, not built through ``bioimageio.spec``, so that
export needs no extra package; when ``bioimageio.spec`` and
``bioimageio.core`` are installed, the written package is validated with
them (format, files and checksums; then inference on the test input).
"""

from __future__ import annotations

import getpass
import hashlib
import io
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, InputError, UnetpipeError
from .checkpoint import plain
from .model import UNet

log = logging.getLogger("unetpipe")

__all__ = ["ExportResult", "UNetProbabilities", "export_model", "import_model"]

#: bioimage.io model format version written when bioimageio.spec is not installed
FORMAT_VERSION = "0.5.12"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript")
SCALE_RANGE_EPS = 1e-6  # bioimage.io's default; bioimageio.core always uses it
UNET_DOI = "10.1007/978-3-319-24574-4_28"
UNET_CITATION = ("Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks "
                 "for Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.")
DEFAULT_TEST_SHAPE = {2: (256, 256), 3: (16, 128, 128)}
# what only resuming a training run needs
_RESUME_ONLY = ("optimizer", "scheduler", "rng", "pending_loss")
_FILES = {"pytorch_state_dict": "weights.pt", "torchscript": "weights_torchscript.pt",
          "input": "test_input.npy", "output": "test_output.npy", "readme": "README.md",
          "cover": "cover.png", "sample_input": "sample_input.tif",
          "sample_output": "sample_output.tif"}


class UNetProbabilities(UNet):
    """The U-Net returning softmax class probabilities, for bioimage.io consumers.

    Takes the constructor arguments of :class:`unetpipe.nn.model.UNet` and has
    the same state dict. Only ``padding="same"``: the output has the input's
    spatial shape, which must be a multiple of the pooling factor.

    Notes
    -----
    ``forward`` skips the shape checks of :meth:`UNet.forward` (and a
    same-padding U-Net crops nothing), so that ``torch.jit.trace`` records
    no Python shape logic and the traced module accepts any valid input size.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.config["padding"] != "same":
            raise ValueError("UNetProbabilities supports only padding='same'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, Tensor of shape (N, out_channels, *S), for x of shape (N, C, *S)."""
        return torch.softmax(self._forward_unchecked(x).float(), dim=1)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    output: str
    weight_formats: tuple[str, ...]
    test_shape: tuple[int, ...]
    validation: str
    seconds: float


# --- helpers ------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a bioimage.io package: a ``.zip``, its ``rdf.yaml`` /
    ``bioimageio.yaml``, or a folder holding one."""
    path = os.fspath(path)
    return path.lower().endswith((".zip", ".yaml", ".yml")) or (
        os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n))
                                    for n in RDF_NAMES))


def _classes(ckpt: dict, n: int) -> list[str]:
    targets = ckpt.get("targets") or {}
    classes = targets.get("classes")
    if not classes:
        classes = (["background", "cell"] if n == 2 else
                   ["background", "interior", "boundary"] if n == 3 else
                   [f"class{i}" for i in range(n)])
    return [str(c) for c in classes]


def _normalization(ckpt: dict) -> tuple[tuple[float, float], bool]:
    norm = ckpt.get("normalization") or {}
    pct = norm.get("percentiles")
    if not pct:
        log.warning("export: the checkpoint does not record its normalisation; declaring "
                    "unetpipe's default percentiles (1, 99.8) without clipping")
        pct = (1.0, 99.8)
    return (float(pct[0]), float(pct[1])), bool(norm.get("clip"))


def declared_preprocessing(image: np.ndarray, percentiles: Sequence[float], *,
                           clip: bool = False) -> np.ndarray:
    """The preprocessing an exported package declares, as bioimage.io tools apply it.

    Parameters
    ----------
    image : ndarray of shape (C, *S)
        Raw image, channel first.
    percentiles : (float, float)
        Low and high percentile, per channel, over the spatial axes.
    clip : bool
        Clip to [0, 1].

    Returns
    -------
    ndarray of float32, shape (C, *S)
        ``(x - p_low) / (p_high - p_low + 1e-6)`` with the percentiles of
        the float32 image (linear interpolation), then clipped if asked.

    Notes
    -----
    unetpipe's own :func:`unetpipe.stages.preprocess.percentile_normalize` divides
    by ``p_high - p_low`` and takes the percentiles in float64: the two
    differ by about ``1e-6 / (p_high - p_low)`` relative.
    """
    x = np.asarray(image, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    low = np.quantile(x, percentiles[0] / 100, axis=axes, method="linear", keepdims=True)
    high = np.quantile(x, percentiles[1] / 100, axis=axes, method="linear", keepdims=True)
    out = ((x - low) / (high - low + np.float32(SCALE_RANGE_EPS))).astype(np.float32)
    return out.clip(0.0, 1.0) if clip else out


def _test_input(ckpt: dict, image, test_shape, *, grid: tuple[int, ...]) -> np.ndarray:
    """Raw test input (C, *S) as float32: a central crop of ``image``, or synthetic nuclei."""
    cfg = ckpt["model"]["config"]
    ndim, channels = cfg["ndim"], cfg["in_channels"]
    shape = tuple(int(s) for s in (test_shape or DEFAULT_TEST_SHAPE[ndim]))
    if len(shape) != ndim:
        raise ConfigError(f"test shape {list(shape)} must have {ndim} values for a {ndim}D "
                          "model")
    if any(s < g for s, g in zip(shape, grid, strict=True)):
        raise ConfigError(f"test shape {list(shape)} is smaller than the network's smallest "
                          f"input {list(grid)}")
    if image is None:
        from ..inputs.synth import synthetic_nuclei

        snapped = tuple(max(g, s // g * g) for s, g in zip(shape, grid, strict=True))
        raw, _ = synthetic_nuclei(snapped, seed=0)
        # further channels: the same nuclei, dimmer, so every channel has structure
        return np.stack([raw.astype(np.float32) / (c + 1) for c in range(channels)])
    from ..io.images import read_image

    img = read_image(image)
    data = img.data if "c" in img.axes else img.data[None]
    if img.ndim != ndim or data.shape[0] != channels:
        raise InputError(image, f"has {img.ndim} spatial axes and {data.shape[0]} channel(s) "
                                f"(axes {img.axes}), but the model takes {ndim}D images with "
                                f"{channels} channel(s)")
    have = data.shape[1:]
    crop = tuple(min(s, h) // g * g for s, h, g in zip(shape, have, grid, strict=True))
    if any(c < 1 for c in crop):
        raise InputError(image, f"spatial shape {tuple(have)} is smaller than the network's "
                                f"smallest input {grid}")
    box = tuple(slice((h - c) // 2, (h - c) // 2 + c) for h, c in zip(have, crop, strict=True))
    raw = np.asarray(data[(slice(None), *box)], dtype=np.float32)
    if not np.isfinite(raw).all():
        raise InputError(image, "the image contains NaN or Inf values")
    return raw


def _cover(raw_normalized: np.ndarray, probs: np.ndarray, classes: list[str]) -> bytes:
    """PNG: the (normalised) input and the foreground probability side by side."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    mid = (lambda a: a[a.shape[0] // 2]) if raw_normalized.ndim == 4 else (lambda a: a)
    image = mid(raw_normalized[0])
    fg = [i for i, c in enumerate(classes) if c in ("cell", "interior")] or [len(classes) - 1]
    fig = Figure(figsize=(8, 4), dpi=100)
    for k, (title, data, cmap) in enumerate((("input", image, "gray"),
                                             (f"P({classes[fg[0]]})", mid(probs[fg[0]]),
                                              "magma"))):
        ax = fig.add_axes((k / 2, 0, 0.5, 0.92))
        lo, hi = (np.percentile(data, (1, 99.8)) if k == 0 else (0.0, 1.0))
        ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _readme(*, name: str, description: str, ckpt: dict, classes: list[str], axes: str,
            grid, percentiles, clip: bool, test_shape, weights: Sequence[str]) -> str:
    cfg = ckpt["model"]["config"]
    data = ckpt.get("data") or {}
    targets = ckpt.get("targets") or {}
    best = ckpt.get("best") if isinstance(ckpt.get("best"), dict) else {}
    ap = ckpt.get("val_ap", best.get("ap"))
    ap_text = (f"{ap:.3f} (AP at IoU 0.5 on the validation images, iteration "
               f"{ckpt.get('iteration', best.get('iteration'))})" if ap is not None
               else "not recorded (trained without validation images)")
    unit = data.get("unit") or "pixel"
    listed = lambda v: ", ".join(map(str, v)) if v else "not recorded"  # noqa: E731
    step = " then clipped to [0, 1]" if clip else ""
    return f"""# {name}

{description}

A U-Net (Ronneberger et al. 2015, doi:{UNET_DOI}) trained with
[unetpipe](https://github.com/unetpipe/unetpipe): {cfg['ndim']}D, depth {cfg['depth']},
{cfg['features']} features at the first level, {cfg['padding']} padding, norm {cfg['norm']},
pooling {cfg.get('pooling')}, {cfg['in_channels']} input channel(s), {cfg['out_channels']}
classes.

## Training

- Training images: {listed(data.get('train'))}
- Validation images: {listed(data.get('val'))}
- Axes: {axes}; spacing {data.get('spacing')} ({unit})
- Targets: mode {targets.get('mode')}, classes {', '.join(classes)}; weight map
  w0 = {targets.get('w0')}, sigma = {targets.get('sigma')}, class balance
  {targets.get('class_balance')}
- Iterations: {ckpt.get('iteration')}
- unetpipe {ckpt.get('unetpipe_version', 'unknown')}, PyTorch {ckpt.get('torch_version', 'unknown')}

## Input and output

- Input `raw`: axes batch, channel, {', '.join(axes)}; each spatial size must be a multiple of
  {', '.join(map(str, grid))} ({', '.join(axes)}). Raw intensities, any numeric type.
- Preprocessing: per image and channel, the {percentiles[0]:g} and {percentiles[1]:g} percentiles
  over the spatial axes are mapped to 0 and 1 (`scale_range`){step}, as float32 — the same as
  `unetpipe preprocess`.
- Output `probabilities`: axes batch, channel ({', '.join(classes)}), {', '.join(axes)}; softmax
  class probabilities, the input's spatial size.
- Weights: {', '.join(weights)}. The state dict's architecture is
  `unetpipe.bioimageio.UNetProbabilities` (needs `pip install unetpipe`); the TorchScript
  needs only PyTorch.

Convolutions are zero-padded, so pixels within about half the receptive field
({', '.join(str(r // 2) for r in _receptive(cfg))} pixels) of the border of a tile see zeros.
Tools that tile large images should overlap tiles by that much; unetpipe's own prediction does
this (overlap-tile with mirror padding).

## Post-processing to instances

The output holds probabilities only. `unetpipe segment` turns them into instance labels:
connected components of the {'cell' if len(classes) == 2 else 'interior'} class, grown back over
the separation {'gaps' if len(classes) == 2 else 'ring (boundary class)'} between touching
objects (or a seeded watershed), then size filtering and hole filling.

## Use with unetpipe

```
unetpipe preprocess image.tif image.ome.zarr --percentiles {percentiles[0]:g} {percentiles[1]:g}{' --clip true' if clip else ''}
unetpipe predict model.zip image.ome.zarr probabilities.ome.zarr
unetpipe segment probabilities.ome.zarr labels.ome.zarr
```

or, in the Snakemake workflow's config, `predict: {{checkpoint: model.zip}}`. The package
holds the whole checkpoint description (`config.unetpipe`), so unetpipe uses it like the
`.pt` checkpoint it was exported from.

## Validation

Best validation score: {ap_text}. The test input `test_input.npy` (raw, shape
{'x'.join(map(str, test_shape))} per channel) and `test_output.npy` (the probabilities
unetpipe computes for it after the declared preprocessing) let any bioimage.io tool check that
it reproduces the model. To validate on your own data, segment annotated images with
`unetpipe segment` and score them with `unetpipe evaluate` (AP, F1, panoptic quality, SEG).

## Citation

{UNET_CITATION} doi:{UNET_DOI}
"""


def _receptive(cfg: dict) -> tuple[int, ...]:
    from .model import receptive_field

    return receptive_field(ndim=cfg["ndim"], depth=cfg["depth"], pooling=cfg.get("pooling"))


def _format_version(exact: bool) -> str:
    """The newest model format version the installed bioimageio.spec implements.

    ``exact=False`` reads it from the package version (``0.5.12.x`` implements
    ``0.5.12``) instead of importing bioimageio.spec, which takes seconds.
    """
    if exact:
        try:
            from bioimageio.spec.model.v0_5 import ModelDescr
        except ImportError:
            return FORMAT_VERSION
        return str(ModelDescr.implemented_format_version)
    parts = _version("bioimageio.spec").split(".")
    return ".".join(parts[:3]) if parts[:2] == ["0", "5"] and len(parts) >= 3 \
        else FORMAT_VERSION


def _author_name() -> str:
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):  # no user name in a container
        return os.environ.get("USER") or "unknown"


# --- export -------------------------------------------------------------------------


def export_model(checkpoint: str | os.PathLike, output: str | os.PathLike, *,
                 image: str | os.PathLike | None = None, name: str | None = None,
                 description: str | None = None, authors: Sequence[str] | None = None,
                 license: str = "CC-BY-4.0", weights: Sequence[str] = WEIGHT_FORMATS,
                 test_shape: Sequence[int] | None = None,
                 validate: bool = True) -> ExportResult:
    """Write a checkpoint as a bioimage.io model package (``.zip``).

    Parameters
    ----------
    checkpoint : path
        A unetpipe checkpoint (``checkpoint_best.pt``); its U-Net must use
        ``padding="same"``.
    output : path
        The package to write, e.g. ``model.zip``; written under a temporary
        name and renamed once complete (and validated).
    image : path, optional
        A raw image (TIFF, Zarr, OME-Zarr) to crop the test input from;
        default: a synthetic nuclei image.
    name, description : str, optional
        The model's name and one-line description.
    authors : sequence of str, optional
        Author names; default: the user running the export.
    license : str
        SPDX license identifier of the model.
    weights : sequence of {"pytorch_state_dict", "torchscript"}
        Weight formats to include; the state dict is always included.
    test_shape : sequence of int, optional
        Spatial shape of the test input (rounded down to the pooling grid);
        default 256x256 (2D) or 16x128x128 (3D).
    validate : bool
        Check the package with bioimageio.spec and bioimageio.core (when
        installed): its description and files, then inference on the test
        input against the test output.

    Returns
    -------
    ExportResult

    Raises
    ------
    InputError
        The checkpoint cannot be exported (valid padding, not a checkpoint),
        the image does not fit the model, or validation failed (nothing is
        written then).
    """
    from ..io.images import replace_path
    from .checkpoint import read_checkpoint
    from .model import pooling_factor

    t0 = time.perf_counter()
    ckpt_path, output = os.fspath(checkpoint), Path(os.fspath(output))
    weights = tuple(dict.fromkeys(("pytorch_state_dict", *weights)))
    unknown = [w for w in weights if w not in WEIGHT_FORMATS]
    if unknown:
        raise ConfigError(f"unknown weight format(s) {unknown}; choose from {WEIGHT_FORMATS}")
    if output.suffix != ".zip":
        raise InputError(output, "a bioimage.io package must be a .zip file")
    ckpt = import_model(ckpt_path) if is_package(ckpt_path) else read_checkpoint(ckpt_path)
    cfg = dict(ckpt["model"]["config"])
    if ckpt["model"].get("class") != "UNet":
        raise InputError(ckpt_path, f"model class {ckpt['model'].get('class')!r} cannot be "
                                    "exported")
    if cfg.get("padding", "same") != "same":
        raise InputError(ckpt_path, f"the U-Net has padding={cfg.get('padding')!r}; only "
                                    "padding='same' models can be exported to bioimage.io "
                                    "(their output must have the input's size)")
    model = UNetProbabilities(**cfg)
    model.load_state_dict(ckpt["model"]["state_dict"])
    model.eval()
    cfg = model.config
    ndim = cfg["ndim"]
    grid = pooling_factor(ndim=ndim, depth=cfg["depth"], pooling=cfg["pooling"])
    axes = "zyx"[3 - ndim:]
    classes = _classes(ckpt, cfg["out_channels"])
    if len(classes) != cfg["out_channels"]:
        raise InputError(ckpt_path, f"lists {len(classes)} classes {classes} but the network "
                                    f"has {cfg['out_channels']} outputs")
    percentiles, clip = _normalization(ckpt)

    raw = _test_input(ckpt, None if image is None else os.fspath(image), test_shape, grid=grid)
    shape = tuple(raw.shape[1:])
    normalized = declared_preprocessing(raw, percentiles, clip=clip)
    with torch.inference_mode():
        probs = model(torch.from_numpy(normalized[None])).numpy()

    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    files[_FILES["pytorch_state_dict"]] = buf.getvalue()
    if "torchscript" in weights:
        import warnings

        # TorchScript is deprecated in recent PyTorch, but it is what bioimage.io tools run
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, torch.from_numpy(normalized[None]))
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
        files[_FILES["torchscript"]] = buf.getvalue()
    import tifffile

    for key, array in (("input", raw[None]), ("output", probs)):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
        files[_FILES[key]] = buf.getvalue()
        buf = io.BytesIO()  # the same, for people and viewers
        tifffile.imwrite(buf, np.ascontiguousarray(array[0], dtype=np.float32),
                         photometric="minisblack")
        files[_FILES[f"sample_{key}"]] = buf.getvalue()
    name = name or f"unetpipe U-Net {ndim}D {'-'.join(classes)}"
    description = description or (
        f"{ndim}D U-Net (Ronneberger et al. 2015) for instance segmentation of nuclei/cells, "
        f"trained with unetpipe: {len(classes)}-class probabilities ({', '.join(classes)}).")
    files[_FILES["readme"]] = _readme(
        name=name, description=description, ckpt=ckpt, classes=classes, axes=axes, grid=grid,
        percentiles=percentiles, clip=clip, test_shape=shape, weights=weights).encode()
    files[_FILES["cover"]] = _cover(normalized, probs[0], classes)

    rdf = _rdf(ckpt=ckpt, cfg=cfg, name=name, description=description,
               authors=list(authors) if authors else [_author_name()], license=license,
               weights=weights, axes=axes, grid=grid, classes=classes,
               percentiles=percentiles, clip=clip, files=files, validate=validate)
    import yaml

    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode()

    output.parent.mkdir(parents=True, exist_ok=True)
    # built and validated under the final name in a hidden folder beside it, then moved
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as stage:
        staged = Path(stage) / output.name
        with zipfile.ZipFile(staged, "w", compression=zipfile.ZIP_DEFLATED,
                             compresslevel=1) as zf:
            for fname in ("rdf.yaml", *sorted(set(files) - {"rdf.yaml"})):
                zf.writestr(fname, files[fname])
        status = _validate(staged, weights) if validate else "not validated (validate=False)"
        replace_path(staged, output)
    return ExportResult(output=os.fspath(output), weight_formats=weights, test_shape=shape,
                        validation=status, seconds=time.perf_counter() - t0)


def _rdf(*, ckpt, cfg, name, description, authors, license, weights, axes, grid, classes,
         percentiles, clip, files, validate) -> dict:
    """The model description (bioimage.io format 0.5) as plain YAML values."""
    import platform

    data = ckpt.get("data") or {}
    spacing = data.get("spacing")
    calibrated = data.get("unit") in ("micrometer", "micron", "um", "µm") and spacing \
        and len(spacing) == len(axes)

    def space(i: int, a: str, size) -> dict:
        ax = {"type": "space", "id": a, "size": size}
        if calibrated:
            ax.update(unit="micrometer", scale=float(spacing[i]))
        return ax

    def file(key: str) -> dict:
        return {"source": _FILES[key], "sha256": _sha256(files[_FILES[key]])}

    version = str(torch.__version__).split("+")[0]
    preprocessing = [
        {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
        {"id": "scale_range", "kwargs": {"axes": list(axes), "min_percentile": percentiles[0],
                                         "max_percentile": percentiles[1],
                                         "eps": SCALE_RANGE_EPS}},
    ]
    if clip:
        preprocessing.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
    preprocessing.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})
    weights_rdf = {"pytorch_state_dict": {
        **file("pytorch_state_dict"),
        "architecture": {"callable": "UNetProbabilities", "import_from": "unetpipe.bioimageio",
                         "kwargs": plain(cfg, json=True)},
        "pytorch_version": version,
        "comment": "needs the unetpipe package (pip install unetpipe)",
    }}
    if "torchscript" in weights:
        weights_rdf["torchscript"] = {**file("torchscript"), "parent": "pytorch_state_dict",
                                      "pytorch_version": version,
                                      "comment": "traced from the state dict weights"}
    meta = plain({k: v for k, v in ckpt.items() if k not in _RESUME_ONLY}, json=True)
    meta["model"] = plain({"class": ckpt["model"].get("class", "UNet"), "config": cfg}, json=True)
    if isinstance(meta.get("best"), dict):
        meta["best"].pop("state_dict", None)  # its tensors are gone: weights are the model's
    return {
        "format_version": _format_version(validate),
        "type": "model",
        "name": name,
        "description": description,
        "authors": [{"name": a} for a in authors],
        "cite": [{"text": UNET_CITATION, "doi": UNET_DOI}],
        "license": license,
        "tags": ["unet", "unetpipe", "segmentation", "instance-segmentation", "nuclei", "cells",
                 f"{len(axes)}d", "pytorch", "fluorescence-light-microscopy"],
        "documentation": file("readme"),
        "covers": [file("cover")],
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": [{
            "id": "raw",
            "description": "raw image, channel first; normalised by the preprocessing",
            "axes": [{"type": "batch"},
                     {"type": "channel",
                      "channel_names": [f"channel{i}" for i in range(cfg["in_channels"])]},
                     *(space(i, a, {"min": int(g), "step": int(g)})
                       for i, (a, g) in enumerate(zip(axes, grid, strict=True)))],
            "test_tensor": file("input"),
            "sample_tensor": file("sample_input"),
            "data": {"type": "float32"},
            "preprocessing": preprocessing,
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "softmax class probabilities; unetpipe segment makes instances",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": classes},
                     *(space(i, a, {"tensor_id": "raw", "axis_id": a})
                       for i, a in enumerate(axes))],
            "test_tensor": file("output"),
            "sample_tensor": file("sample_output"),
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": weights_rdf,
        "attachments": [],
        "config": {"unetpipe": meta,
                   "bioimageio": {"reproducibility_tolerance": [
                       {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-4}]},
                   "exported_with": {"python": platform.python_version(),
                                     "torch": str(torch.__version__)}},
    }


def _validate(package: Path, weights: Sequence[str]) -> str:
    """Validate a written package with bioimageio.spec and .core; a short status line."""
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError:
        log.warning("export: bioimageio.spec is not installed; %s was not validated "
                    "(pip install bioimageio.spec bioimageio.core)", package.name)
        return "not validated (bioimageio.spec not installed)"
    spec = f"bioimageio.spec {_version('bioimageio.spec')}"
    try:
        from bioimageio.core import test_model
    except ImportError:
        test_model = None
    if test_model is None:
        descr = load_description(package, perform_io_checks=True)
        if isinstance(descr, InvalidDescr):
            raise UnetpipeError(f"{package.name}: the bioimage.io description is invalid: "
                                f"{_problems(descr.validation_summary)}")
        log.warning("export: bioimageio.core is not installed; the package's format was "
                    "validated but its inference was not tested")
        return f"{spec}: valid format; inference not tested (bioimageio.core not installed)"
    # loads the package with bioimageio.spec (I/O checks on), then runs every weight format
    # on the test input, with the declared preprocessing, against the test output
    summary = test_model(package, devices=["cpu"])
    if summary.status != "passed":
        raise UnetpipeError(f"{package.name}: bioimage.io validation failed: "
                            f"{_problems(summary)}")
    return (f"{spec}: valid format; bioimageio.core {_version('bioimageio.core')} test_model "
            f"passed ({', '.join(weights)})")


def _problems(summary) -> str:
    """The failed checks of a bioimageio validation summary, on one line."""
    lines = []
    for detail in summary.details:
        for err in detail.errors:
            lines.append(f"{'.'.join(map(str, err.loc))}: {err.msg}" if err.loc else err.msg)
        if detail.status == "failed" and not detail.errors:
            lines.append(detail.name)
    return "; ".join(dict.fromkeys(" ".join(str(ln).split()) for ln in lines)) or summary.status


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


# --- import -------------------------------------------------------------------------


def _reader(path: Path):
    """(rdf text, read(file name) -> bytes) of a package, folder or rdf file."""
    if not path.exists():
        raise InputError(path, "bioimage.io model not found")
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(path, f"not a readable zip file: {e}") from None
        names = set(zf.namelist())
        rdf = next((n for n in RDF_NAMES if n in names), None)
        if rdf is None:
            raise InputError(path, "not a bioimage.io model package (no rdf.yaml or "
                                   "bioimageio.yaml in the zip)")

        def read(name: str) -> bytes:
            if name not in names:
                raise InputError(path, f"the package lists {name!r} but does not contain it")
            return zf.read(name)

        return read(rdf), read
    folder = path if path.is_dir() else path.parent
    rdf_path = path if path.is_file() else next(
        (folder / n for n in RDF_NAMES if (folder / n).is_file()), None)
    if rdf_path is None:
        raise InputError(path, "no rdf.yaml or bioimageio.yaml in the folder")

    def read_file(name: str) -> bytes:
        f = (folder / name).resolve()
        if folder.resolve() not in f.parents or not f.is_file():
            raise InputError(path, f"the description lists {name!r}, which is not a file in "
                                   f"{folder}")
        return f.read_bytes()

    return rdf_path.read_bytes(), read_file


def import_model(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """A bioimage.io model exported by unetpipe, as a unetpipe checkpoint.

    Parameters
    ----------
    path : path
        The package (``.zip``), its unpacked folder, or the folder's
        ``rdf.yaml`` / ``bioimageio.yaml``.
    map_location : str or torch.device
        Where to load the tensors.

    Returns
    -------
    dict
        In the layout of :func:`unetpipe.nn.checkpoint.read_checkpoint`
        (``format``, ``version``, ``model`` with ``class``, ``config`` and
        ``state_dict``, ``normalization``, ``targets``, ``data``, ``config``,
        ...), plus ``bioimageio``: where it came from.

    Raises
    ------
    InputError
        The file is not a bioimage.io model written by unetpipe (no
        ``config.unetpipe`` or no ``pytorch_state_dict`` weights), a file is
        missing, or the weights' sha256 differs from the one the description
        lists. Nothing from the package is executed: the weights are loaded
        with ``torch.load(..., weights_only=True)``.
    """
    import pickle

    import yaml

    from .checkpoint import FORMAT, VERSION

    p = Path(os.fspath(path))
    text, read = _reader(p)
    try:
        rdf = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(p, f"the model description is not valid YAML: {e}") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise InputError(p, "not a bioimage.io model description (type is not 'model')")
    meta = (rdf.get("config") or {}).get("unetpipe")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(p, "not a model exported by unetpipe (no config.unetpipe checkpoint "
                            "description); unetpipe can only import its own exports")
    if int(meta.get("version", 0)) > VERSION:
        raise InputError(p, f"checkpoint layout version {meta.get('version')} is newer than "
                            f"this unetpipe understands ({VERSION}); upgrade unetpipe")
    entry = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(entry, dict) or not entry.get("source"):
        raise InputError(p, "has no pytorch_state_dict weights, which unetpipe needs")
    source = str(entry["source"])
    if "://" in source:
        raise InputError(p, f"the weights are at {source}; unetpipe reads only weights inside "
                            "the package")
    blob = read(source)
    want = entry.get("sha256")
    if not want:
        raise InputError(p, f"the description lists no sha256 for the weights {source!r}")
    got = _sha256(blob)
    if got != str(want).lower():
        raise InputError(p, f"the weights file {source!r} has sha256 {got}, but the "
                            f"description lists {want}: the file was changed or damaged")
    try:
        state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(p, f"refusing to load the weights {source!r}: they hold objects "
                            f"other than tensors ({type(e).__name__})") from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise InputError(p, f"the weights {source!r} are not a readable state dict: "
                            f"{e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise InputError(p, f"the weights {source!r} are not a state dict of tensors")
    model = dict(meta.get("model") or {})
    model.setdefault("class", "UNet")
    model.setdefault("config", (entry.get("architecture") or {}).get("kwargs"))
    model["state_dict"] = state
    ckpt = dict(meta)
    ckpt["model"] = model
    ckpt["bioimageio"] = {"source": os.path.abspath(p), "name": rdf.get("name"),
                          "format_version": rdf.get("format_version")}
    return ckpt
