"""napari reader for what the pipeline writes (npe2 command ``unetpipe.get_reader``).

It opens, as napari layers with the stores' physical pixel size:

- a results folder (``results/``): every sample of every stage, each layer
  named after its sample (``"{sample} image"``, ``"{sample} labels"``, ...);
- a stage folder (``results/labels/``): every sample of that stage;
- one sample's store in a results folder (``results/labels/{sample}.ome.zarr``):
  that sample's stores of all stages, found beside it;
- any other store written by unetpipe (recognised by its attributes).

Layers of one sample:

=========================  ======  ===============================================
name                       type    from
=========================  ======  ===============================================
``{s} image``              image   ``preprocessed/{s}.ome.zarr`` (multiscale)
``{s} ground truth``       labels  ``preprocessed/{s}.ome.zarr/labels/gt``
``{s} P(class)``           image   ``probabilities/{s}.ome.zarr``, one per class
``{s} targets``            labels  ``targets/{s}.zarr/targets``
``{s} weights``            image   ``targets/{s}.zarr/weights``
``{s} labels``             labels  ``labels/{s}.ome.zarr``
=========================  ======  ===============================================

Which reader napari uses: the manifest claims Zarr stores and folders only,
but napari counts every reader that accepts folders (its builtins,
napari-ome-zarr, ...) able to read any folder, so that a folder opened
without naming a plugin (``napari results/``, drag and drop, File > Open,
``viewer.open(path, plugin=None)``) gets a chooser, unless napari's reader
preferences name one. :func:`prefer_unetpipe` (``unetpipe view``) adds those
preferences for unetpipe's stores wherever they lie in a results folder and
for given results folders; napari's own ``viewer.open(path)`` reads with its
builtins unless ``plugin`` is given.

Everything is lazy: the reader reads metadata only, each pyramid level is a
Dask array over its Zarr array, and contrast limits are set from what the
stages write (normalised intensities, probabilities in [0, 1]), so napari
need not scan the data either. Paths that are not unetpipe outputs give None,
so that other readers (napari-ome-zarr, the builtins) get them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.layout import STORES
from ..io.images import (
    Multiscale,
    group_attributes,
    is_zarr_array,
    ngff_metadata,
    open_dask_array,
    open_multiscale,
    pyramid_data,
    store_kind,
)

STAGES = tuple(STORES)
"""Stage folders of a results folder, in the order their layers are added."""

# Colormaps of the probability classes; background is added hidden.
_CLASS_COLORMAP = {"background": "gray", "cell": "green", "interior": "green",
                   "boundary": "magenta"}
_OTHER_COLORMAPS = ("cyan", "yellow", "red", "blue")

LayerData = tuple  # (data, metadata, layer type), napari's layer data tuple


@dataclass
class _Sample:
    """One sample's stores: stage name -> store path."""

    name: str
    stores: dict[str, Path] = field(default_factory=dict)
    shown: set[str] = field(default_factory=set)  # stages whose layers start visible


# --- recognising stores -----------------------------------------------------------


def _fits(path: Path, stage: str) -> bool:
    """Whether a store in a stage folder has the structure that stage writes."""
    if stage == "targets":
        return is_zarr_array(path / "targets") and is_zarr_array(path / "weights")
    attrs = group_attributes(path)
    return attrs is not None and bool(ngff_metadata(attrs).get("multiscales"))


def _sample_name(path: Path, stage: str | None = None) -> str:
    name = path.name.rstrip("/")
    for suffix in ([STORES[stage]] if stage else []) + [".ome.zarr", ".zarr"]:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _stage_stores(root: Path, stage: str) -> dict[str, Path]:
    """Sample name -> store, for the stores of one stage folder."""
    folder = root / stage
    if not folder.is_dir():
        return {}
    found = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return {}
    for entry in entries:
        # hidden names are partial or temporary outputs
        if entry.name.startswith(".") or not entry.name.endswith(STORES[stage]):
            continue
        if entry.is_dir() and _fits(entry, stage):
            found[_sample_name(entry, stage)] = entry
    return found


def _results_samples(root: Path, stages: Sequence[str] = STAGES) -> list[_Sample] | None:
    """The samples of a results folder, or None if ``root`` is not one.

    A results folder has stage folders holding stores, at least one of
    which carries unetpipe's attributes (others, such as probabilities
    written by hand, are recognised by where they are).
    """
    if not root.is_dir():
        return None
    by_stage = {stage: _stage_stores(root, stage) for stage in STAGES}
    if not any(store_kind(p) is not None for stores in by_stage.values()
               for p in stores.values()):
        return None
    names = sorted({n for stage in stages for n in by_stage[stage]})
    samples = []
    for name in names:
        stores = {stage: by_stage[stage][name] for stage in stages if name in by_stage[stage]}
        samples.append(_Sample(name, stores))
    return samples or None


def _plan(path: str | os.PathLike) -> list[_Sample] | None:
    """What to open for ``path``, or None when it is not unetpipe's."""
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError:
        return None
    if not p.is_dir():
        return None
    p = p.resolve()
    samples = _results_samples(p)
    if samples is not None:  # a results folder
        for i, sample in enumerate(samples):
            # one sample visible at a time: they lie on top of each other
            sample.shown = {"preprocessed", "probabilities", "labels"} if i == 0 else set()
        return samples
    if p.name in STAGES:  # a stage folder of a results folder
        samples = _results_samples(p.parent, stages=(p.name,))
        if samples is not None:
            for i, sample in enumerate(samples):
                sample.shown = {p.name} if i == 0 else set()
            return samples
    stage = p.parent.name if p.parent.name in STAGES else None
    if stage and p.name.endswith(STORES[stage]) and _fits(p, stage):
        # one sample's store in a results folder: bring its other stages along
        name = _sample_name(p, stage)
        siblings = _results_samples(p.parent.parent)
        for sample in siblings or []:
            if sample.name == name:
                sample.shown = {"preprocessed", "probabilities", "labels", stage}
                return [sample]
    kind = store_kind(p)
    if kind is None:
        return None
    return [_Sample(_sample_name(p, kind), {kind: p}, shown={kind})]


# --- layers -------------------------------------------------------------------------


def _placement(ms: Multiscale, *, channels: int | None = None) -> dict:
    """Scale, translation, units and axis labels of a layer (per channel if split)."""
    meta = {"scale": ms.scale, "translate": ms.translate,
            "axis_labels": tuple(ms.spatial_axes)}
    if all(isinstance(u, str) and u for u in ms.units):
        meta["units"] = tuple(ms.units)
    if channels is not None:
        # napari would read a tuple of two strings as one value per channel
        meta = {k: [v] * channels for k, v in meta.items()}
    return meta


def _image_layers(sample: _Sample, path: Path, visible: bool) -> list[LayerData]:
    ms = open_multiscale(path)
    data, multiscale = pyramid_data(ms.levels)
    meta = {"multiscale": multiscale, "blending": "additive",
            "metadata": {"unetpipe": {"sample": sample.name, "stage": "preprocessed",
                                      "path": str(path)}}}
    n = ms.levels[0].shape[0] if ms.axes.startswith("c") else None
    if n is not None and n > 1:
        meta.update(_placement(ms, channels=n), channel_axis=0,
                    name=[f"{sample.name} image c{i}" for i in range(n)],
                    colormap=[("gray", "green", "magenta", "cyan")[i % 4] for i in range(n)],
                    contrast_limits=[[0.0, 1.0]] * n, visible=visible)
    else:
        if n == 1:
            data = [level[0] for level in data] if multiscale else data[0]
        meta.update(_placement(ms), name=f"{sample.name} image", colormap="gray",
                    contrast_limits=[0.0, 1.0], visible=visible)
    layers = [(data, meta, "image")]
    # ground truth shown when there are no predicted labels to look at instead
    layers += _image_label_layers(sample, path, visible and "labels" not in sample.stores)
    return layers


def _image_label_layers(sample: _Sample, path: Path, visible: bool) -> list[LayerData]:
    """The NGFF image-labels of a store (``labels/gt``: the ground truth)."""
    attrs = group_attributes(path / "labels")
    if attrs is None:
        return []
    layers = []
    for label in ngff_metadata(attrs).get("labels") or []:
        group = path / "labels" / str(label)
        if group_attributes(group) is None:
            continue
        ms = open_multiscale(group)
        data, multiscale = pyramid_data(ms.levels)
        title = "ground truth" if label == "gt" else str(label)
        layers.append((data, {
            "name": f"{sample.name} {title}", "multiscale": multiscale, "visible": visible,
            "metadata": {"unetpipe": {"sample": sample.name, "stage": "preprocessed",
                                      "label": str(label), "path": str(group)}},
            **_placement(ms)}, "labels"))
    return layers


def _probability_layers(sample: _Sample, path: Path, visible: bool) -> list[LayerData]:
    ms = open_multiscale(path)
    if not ms.axes.startswith("c"):
        raise ValueError(f"{path}: probabilities have no class axis (axes {ms.axes})")
    data, multiscale = pyramid_data(ms.levels)
    k = ms.levels[0].shape[0]
    ours = (group_attributes(path) or {}).get("unetpipe") or {}
    classes = list(ours.get("classes") or (["background", "cell"] if k == 2
                                            else ["background", "interior", "boundary"]))
    classes = classes[:k] + [f"class{i}" for i in range(len(classes), k)]
    others = iter(_OTHER_COLORMAPS * k)
    colormaps = [_CLASS_COLORMAP.get(c) or next(others) for c in classes]
    meta = {
        "channel_axis": 0, "multiscale": multiscale, "blending": "additive",
        "name": [f"{sample.name} P({c})" for c in classes], "colormap": colormaps,
        "contrast_limits": [[0.0, 1.0]] * k,
        # background is the complement of the rest: there, but hidden
        "visible": [visible and c != "background" for c in classes],
        "metadata": [{"unetpipe": {"sample": sample.name, "stage": "probabilities",
                                   "class": c, "path": str(path)}} for c in classes],
        **_placement(ms, channels=k),
    }
    return [(data, meta, "image")]


def _labels_layers(sample: _Sample, path: Path, visible: bool) -> list[LayerData]:
    ms = open_multiscale(path)
    data, multiscale = pyramid_data(ms.levels)
    return [(data, {"name": f"{sample.name} labels", "multiscale": multiscale,
                    "visible": visible,
                    "metadata": {"unetpipe": {"sample": sample.name, "stage": "labels",
                                              "path": str(path)}},
                    **_placement(ms)}, "labels")]


def _targets_layers(sample: _Sample, path: Path, visible: bool) -> list[LayerData]:
    ours = (group_attributes(path) or {}).get("unetpipe") or {}
    targets = open_dask_array(path / "targets")
    weights = open_dask_array(path / "weights")
    spatial = "zyx"[-targets.ndim:]
    spacing = ours.get("spacing")
    if not spacing or len(spacing) != targets.ndim:
        spacing = [1.0] * targets.ndim
    placement = {"scale": tuple(float(s) for s in spacing),
                 "translate": (0.0,) * targets.ndim, "axis_labels": tuple(spatial)}
    pre = sample.stores.get("preprocessed")
    if pre is not None:
        # the image's placement, so the two overlay exactly
        ms = open_multiscale(pre)
        if len(ms.scale) == targets.ndim:
            placement = _placement(ms)
    elif ours.get("unit"):
        placement["units"] = (str(ours["unit"]),) * targets.ndim
    top = float(ours.get("w0", 10.0)) + max([1.0, *(ours.get("class_weights") or [])])
    info = {"sample": sample.name, "stage": "targets", "path": str(path)}
    return [
        (targets, {"name": f"{sample.name} targets", "visible": visible,
                   "metadata": {"unetpipe": {**info, "classes": ours.get("classes")}},
                   **placement}, "labels"),
        (weights, {"name": f"{sample.name} weights", "colormap": "magma",
                   "contrast_limits": [0.0, top], "blending": "additive",
                   "visible": False, "metadata": {"unetpipe": info}, **placement}, "image"),
    ]


_BUILDERS: dict[str, Callable] = {
    "preprocessed": _image_layers,
    "probabilities": _probability_layers,
    "targets": _targets_layers,
    "labels": _labels_layers,
}


def sample_layers(sample: _Sample) -> list[LayerData]:
    """Layer data tuples of one sample, image first and instance labels on top."""
    layers = []
    for stage in STAGES:
        path = sample.stores.get(stage)
        if path is not None:
            layers += _BUILDERS[stage](sample, path, stage in sample.shown)
    return layers


def napari_get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]):
    """Return a reader for unetpipe outputs, or None for anything else.

    Parameters
    ----------
    path : str, os.PathLike or list of them
        A results folder, a stage folder in it, a sample's store, or any
        store written by unetpipe. With a list, every path must be one.

    Returns
    -------
    callable or None
        ``reader(path) -> list of (data, metadata, layer_type)``; None when
        the path is not unetpipe's (another plugin may read it).
    """
    if isinstance(path, (str, os.PathLike)):
        paths = [path]
    elif isinstance(path, (list, tuple)):
        paths = list(path)
    else:  # not a path napari would give: not ours
        return None
    plans = [_plan(p) for p in paths]
    if not plans or any(p is None for p in plans):
        return None

    def read_unetpipe(_path) -> list[LayerData]:
        return [layer for samples in plans for sample in samples
                for layer in sample_layers(sample)]

    return read_unetpipe


# --- napari's reader preferences ----------------------------------------------------


def reader_preferences(folders: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """napari reader preferences (``settings.plugins.extension2reader``: a
    pattern of folder paths -> plugin) under which napari opens unetpipe's
    outputs with this reader, without asking.

    Every stage store of a results folder (``*/labels/*.ome.zarr/`` and so on,
    wherever the results folder is), and each of ``folders`` (results or stage
    folders: their names are free, so each is named by its full path).
    """
    prefs = {f"*{os.sep}{stage}{os.sep}*{suffix}{os.sep}": "unetpipe"
             for stage, suffix in STORES.items()}
    for folder in folders:
        prefs[os.path.realpath(os.fspath(folder)).rstrip(os.sep) + os.sep] = "unetpipe"
    return prefs


def prefer_unetpipe(folders: Sequence[str | os.PathLike] = (), *, settings=None) -> dict:
    """Add :func:`reader_preferences` to napari's settings (saved with them) and
    return what was added; preferences for other patterns are kept."""
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    added = reader_preferences(folders)
    settings.plugins.extension2reader = {**settings.plugins.extension2reader, **added}
    return added
