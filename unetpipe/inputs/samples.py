"""The sample table: which images the workflow processes, with their labels.

A sample is one image file, named by its file name without extension. The
config lists images per role (``train``, ``val``, ``predict``) as a glob
pattern or a list of paths, and labels matched to them by sample name. When
a path points inside the demo folder (``demo.dir``), the demo's own file list
is used, so the workflow knows its samples before the demo is generated.

This module imports nothing heavy: the Snakefile imports it while parsing.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.config import get
from ..core.errors import ConfigError
from .demo import demo_files

ROLES = ("train", "val", "predict")
# Curated training data (data.curated): one folder per image, holding an image
# and its labels under these names (the first that exists).
CURATED_PREFIX = "curated-"
_CURATED_FILES = ("{}.ome.zarr", "{}.zarr", "{}.ome.tif", "{}.ome.tiff", "{}.tif", "{}.tiff")
_NAME_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr")


def sample_name(path: str | os.PathLike) -> str:
    """The sample name of an image file: its name without image extensions.

    Examples
    --------
    >>> sample_name("data/cells_01.ome.tif")
    'cells_01'
    >>> sample_name("data/stack.ome.zarr/")
    'stack'
    >>> sample_name("data/plate.ome.zarr/0")  # a bioformats2raw series
    'plate'
    """
    parts = Path(os.fspath(path).rstrip("/\\"))
    if parts.name.isdigit() and parts.parent.name.lower().endswith(".zarr"):
        parts = parts.parent
    name = parts.name
    lower = name.lower()
    for suffix in _NAME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass(frozen=True)
class Sample:
    """One image of the workflow.

    Attributes
    ----------
    name : str
        Unique sample name (file name without extension).
    image : str
        Path of the image.
    labels : str or None
        Path of its instance labels, if any.
    roles : tuple of str
        Any of ``"train"``, ``"val"``, ``"predict"``.
    """

    name: str
    image: str
    labels: str | None
    roles: tuple[str, ...]


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _in_demo(path: str, demo_dir: str) -> bool:
    demo = _norm(demo_dir)
    return _norm(path) == demo or _norm(path).startswith(demo + os.sep)


def _demo_paths(config: Mapping) -> list[str]:
    demo = config["demo"]
    return [_norm(p) for p in demo_files(demo["dir"], n_train=demo["n_train"],
                                         n_val=demo["n_val"], n_predict=demo["n_predict"])]


def expand_paths(value, key: str, config: Mapping) -> list[str]:
    """Expand a config value (glob pattern or list of paths) into a sorted list of files.

    Raises
    ------
    ConfigError
        When a pattern matches nothing or a listed file does not exist; the
        message names the key.
    """
    if value is None:
        return []
    patterns = [value] if isinstance(value, str) else list(value)
    demo_dir = config["demo"]["dir"]
    out: list[str] = []
    for pattern in patterns:
        if _in_demo(pattern, demo_dir):
            found = [p for p in _demo_paths(config) if fnmatch.fnmatchcase(p, _norm(pattern))]
            if not found:
                raise ConfigError(f"config key {key!r}: {pattern!r} points into the demo folder "
                                  f"{demo_dir!r} but matches none of the demo's files")
        elif os.path.exists(pattern):
            found = [pattern]  # an existing path, even one with glob characters in its name
        elif any(c in pattern for c in "*?["):
            found = sorted(p for p in glob.glob(pattern) if not os.path.basename(p).startswith("."))
            if not found:
                raise ConfigError(f"config key {key!r}: the pattern {pattern!r} matches no file")
        else:
            raise ConfigError(f"config key {key!r}: {pattern}: file not found")
        out.extend(_norm(p) for p in found)
    return out


def _by_name(paths: list[str], key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in paths:
        name = sample_name(path)
        if name in out and out[name] != path:
            raise ConfigError(f"config key {key!r}: two files have the sample name {name!r}: "
                              f"{out[name]} and {path}")
        out[name] = path
    return out


def curated_samples(folder: str | os.PathLike | None) -> list[tuple[str, str, str]]:
    """Curated training data found in a folder, as ``(name, image, labels)``.

    Every sub-folder ``F`` holding ``image.*`` and ``labels.*`` (TIFF, Zarr or
    OME-Zarr) is one sample named ``curated-F``. Folders whose name starts
    with a dot (exports still being written) are skipped, as is a missing
    folder.

    Raises
    ------
    ConfigError
        A sub-folder holds an image without labels or labels without an image.
    """
    if not folder or not os.path.isdir(folder):
        return []
    out = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith(".") or not os.path.isdir(path):
            continue
        found = {}
        for kind in ("image", "labels"):
            for pattern in _CURATED_FILES:
                candidate = os.path.join(path, pattern.format(kind))
                if os.path.exists(candidate):
                    found[kind] = _norm(candidate)
                    break
        if not found:
            continue
        if len(found) == 1:
            have, lack = ("image", "labels") if "image" in found else ("labels", "image")
            raise ConfigError(f"config key 'data.curated': {path} holds {have} but no {lack} "
                              f"(expected {lack}.tif, {lack}.zarr or {lack}.ome.zarr)")
        out.append((CURATED_PREFIX + entry, found["image"], found["labels"]))
    return out


def sample_table(config: Mapping) -> dict[str, Sample]:
    """Build the sample table from a validated config.

    Parameters
    ----------
    config : mapping
        A config as returned by :func:`unetpipe.core.config.validate_config`.

    Returns
    -------
    dict of str to Sample
        Samples by name, in the order train, val, predict, then curated
        training data (:func:`curated_samples`). An image listed under
        several roles (e.g. training images also segmented) is one sample
        with several roles.

    Raises
    ------
    ConfigError
        An empty pattern or missing file; two different files with the same
        sample name; a training or validation image without labels; no image
        at all.
    """
    _check_not_half_demo(config)
    found: dict[str, tuple[str, str | None, list[str]]] = {}
    for role in ROLES:
        images = _by_name(expand_paths(get(config, f"data.{role}.images"), f"data.{role}.images",
                                       config), f"data.{role}.images")
        labels = _by_name(expand_paths(get(config, f"data.{role}.labels"), f"data.{role}.labels",
                                       config), f"data.{role}.labels")
        for name, image in images.items():
            label = labels.get(name)
            if label is None and role in ("train", "val"):
                some = ", ".join(sorted(labels)[:3]) or "none"
                raise ConfigError(
                    f"config key 'data.{role}.labels': no labels for {image} (sample {name!r}); "
                    f"labels are matched by file name, found: {some}"
                )
            if name in found:
                prev_image, prev_label, roles = found[name]
                if prev_image != image:
                    raise ConfigError(f"two images have the sample name {name!r}: {prev_image} "
                                      f"and {image}; sample names must be unique")
                if label is not None and prev_label is not None and label != prev_label:
                    raise ConfigError(f"sample {name!r} has two label files: {prev_label} "
                                      f"and {label}")
                found[name] = (image, prev_label or label, [*roles, role])
            else:
                found[name] = (image, label, [role])
    for name, image, label in curated_samples(get(config, "data.curated")):
        if name in found:
            raise ConfigError(f"config key 'data.curated': the sample name {name!r} of "
                              f"{image} is taken by {found[name][0]}")
        found[name] = (image, label, ["train"])
    if not found:
        raise ConfigError("no images: set data.train.images and/or data.predict.images")
    return {name: Sample(name, image, label, tuple(roles))
            for name, (image, label, roles) in found.items()}


def _configured(config: Mapping) -> dict[str, list[str]]:
    out = {}
    for role in ROLES:
        for kind in ("images", "labels"):
            value = get(config, f"data.{role}.{kind}")
            out[f"data.{role}.{kind}"] = [value] if isinstance(value, str) else list(value or [])
    return out


def _check_not_half_demo(config: Mapping) -> None:
    """Refuse a config that mixes the user's data with the demo's.

    Every data path defaults to the demo, so a config that sets only some of
    them (say, training images but no validation images) would otherwise
    quietly validate or train on synthetic nuclei.
    """
    demo_dir = config["demo"]["dir"]
    paths = _configured(config)
    demo_keys = [k for k, v in paths.items() if any(_in_demo(p, demo_dir) for p in v)]
    own_keys = [k for k, v in paths.items() if v and not any(_in_demo(p, demo_dir) for p in v)]
    if demo_keys and own_keys:
        raise ConfigError(
            f"config key {demo_keys[0]!r} still points at the demo ({demo_dir}) while "
            f"{own_keys[0]} points at other data; set "
            + " and ".join(repr(k) for k in demo_keys)
            + " to your files or to null"
        )


def uses_demo(config: Mapping) -> bool:
    """Whether any configured path points inside the demo folder."""
    demo_dir = config["demo"]["dir"]
    return any(_in_demo(p, demo_dir) for v in _configured(config).values() for p in v)
