"""OME-Zarr (NGFF) stores in either version the tools in use read.

======  ==============  ==================================================
NGFF    Zarr format     who reads it (checked 2026-12)
======  ==============  ==================================================
0.4     2               Fiji (its N5/Zarr importer, MoBIE, BigDataViewer),
                        napari (unetpipe, napari-ome-zarr), ome-zarr-py
0.5     3               napari, ome-zarr-py; not yet Fiji nor MoBIE
                        (their Zarr reader opens no format-3 store:
                        mobie-viewer-fiji#1250)
======  ==============  ==================================================

so 0.4 is the default (config key ``io.ngff_version``). A store's version
follows from its Zarr format: a group of format 2 is written as 0.4 (the
metadata are top-level attributes, arrays use ``/`` as chunk separator and
Blosc compression, as the 0.4 spec and its readers expect), one of format 3 as
0.5 (the metadata sit under ``ome``, arrays name their dimensions).

The metadata are built with ome-zarr-models, the maintained model of the
spec, so a store's metadata are checked against the spec when they are made;
:func:`validate` checks a whole store (metadata and arrays) the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

VERSIONS = ("0.4", "0.5")
DEFAULT_VERSION = "0.4"
_ZARR_FORMAT = {"0.4": 2, "0.5": 3}
DIMENSIONS_ATTRIBUTE = "_ARRAY_DIMENSIONS"

# Probability channels: colours that tell the classes apart in Fiji and napari
CLASS_COLOURS = {"background": "808080", "cell": "00FF00", "interior": "00FF00",
                 "boundary": "FF00FF"}
_OTHER_COLOURS = ("FFFF00", "00FFFF", "FF8000", "0080FF")


def check_version(version) -> str:
    """``version`` as one of :data:`VERSIONS` (None gives the default).

    Raises
    ------
    ValueError
        For any other value.
    """
    if version is None:
        return DEFAULT_VERSION
    text = str(version)
    if text not in VERSIONS:
        raise ValueError(f"NGFF version {version!r} is not supported; choose one of "
                         f"{', '.join(VERSIONS)} (config key io.ngff_version)")
    return text


def zarr_format(version) -> int:
    """The Zarr format of an NGFF version: 2 for 0.4, 3 for 0.5."""
    return _ZARR_FORMAT[check_version(version)]


def group_version(group) -> str:
    """The NGFF version a Zarr group is written in, from its Zarr format."""
    return "0.5" if group.metadata.zarr_format == 3 else "0.4"


def new_group(path: str | os.PathLike, version=None):
    """A new, empty Zarr group at ``path`` in the format of NGFF ``version``."""
    import zarr

    return zarr.open_group(os.fspath(path), mode="w", zarr_format=zarr_format(version))


def create_array(group, name: str, *, shape: Sequence[int], chunks: Sequence[int], dtype,
                 axes: str | None = None, fill_value=0, fast: bool = False):
    """An array of ``group``, in its Zarr format.

    Format 3 arrays name their dimensions (``axes``); format 2 arrays use
    ``/`` as chunk key separator, which the 0.4 spec and the Java readers
    expect, and name their dimensions in the attribute ``_ARRAY_DIMENSIONS``
    (xarray's convention). Chunks are compressed with Blosc and byte shuffle:
    zstd, or lz4 when ``fast`` (for arrays written faster than they compress
    well with zstd: probabilities, written while the network waits).
    """
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    cname = "lz4" if fast else "zstd"
    if group.metadata.zarr_format == 3:
        from zarr.codecs import BloscCodec

        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                  fill_value=fill_value,
                                  compressors=BloscCodec(cname=cname, clevel=5,
                                                         shuffle="shuffle"),
                                  dimension_names=list(axes) if axes else None)
    from numcodecs import Blosc

    array = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                               fill_value=fill_value,
                               chunk_key_encoding={"name": "v2", "separator": "/"},
                               compressors=Blosc(cname=cname, clevel=5, shuffle=Blosc.SHUFFLE))
    if axes:  # the names of the dimensions, as xarray writes them in format 2
        array.attrs[DIMENSIONS_ATTRIBUTE] = list(axes)
    return array


def _spec(version: str):
    """The ome-zarr-models modules of one NGFF version."""
    import importlib
    from types import SimpleNamespace

    package = "ome_zarr_models.v04" if version == "0.4" else "ome_zarr_models.v05"
    return SimpleNamespace(**{name: importlib.import_module(f"{package}.{name}")
                              for name in ("axes", "image_label_types", "multiscales")})


def _dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def multiscale(version, *, axes: str, unit: str | None, scales: Sequence[Sequence[float]],
               translations: Sequence[Sequence[float]] | None = None, name: str | None = None,
               kind: str | None = None) -> dict:
    """One entry of ``multiscales``: the axes and every level's scale and translation.

    Parameters
    ----------
    version : str
        ``"0.4"`` or ``"0.5"``.
    axes : str
        Axis letters, ``"c"`` for channels, the others spatial.
    unit : str or None
        NGFF unit of the spatial axes (``"micrometer"``), None for pixels.
    scales, translations : sequence of sequences of float
        Per level, one value per axis (1 and 0 for a channel axis).
        ``translations`` may be None (all zero: none is written).
    name, kind : str, optional
        The image's name and how its levels were made (``"mean"``, ``"nearest"``).
    """
    version = check_version(version)
    spec = _spec(version)
    axis_models = [spec.axes.Axis(name=a, type="channel") if a == "c"
                   else spec.axes.Axis(name=a, type="space", unit=unit) for a in axes]
    moved = translations is not None and any(any(float(v) for v in t) for t in translations)
    datasets = [spec.multiscales.Dataset.build(
        path=str(i), scale=[float(v) for v in s],
        translation=[float(v) for v in translations[i]] if moved else None)
        for i, s in enumerate(scales)]
    extra = {"version": "0.4"} if version == "0.4" else {}
    model = spec.multiscales.Multiscale(axes=axis_models, datasets=datasets, name=name,
                                        type=kind, **extra)
    return _dump(model)


def channels(names: Sequence[str], *, window: tuple[float, float] = (0.0, 1.0),
             active: Sequence[bool] | None = None) -> dict:
    """``omero`` metadata naming the channels (their labels), with a colour and a
    display window each: how Fiji, QuPath and napari-ome-zarr name channel layers."""
    from ome_zarr_models.common.omero import Channel, Omero, Window

    low, high = (float(v) for v in window)
    others = iter(_OTHER_COLOURS * (1 + len(names)))
    entries = []
    for i, name in enumerate(names):
        colour = CLASS_COLOURS.get(str(name)) or ("FFFFFF" if len(names) == 1 else next(others))
        entries.append(Channel(color=colour, window=Window(min=low, max=high, start=low,
                                                              end=high),
                               label=str(name),
                               active=bool(active[i]) if active is not None else True))
    return _dump(Omero(channels=entries))


def image_label(version, *, source: str | None = None,
                colours: Mapping[int, Sequence[int]] | None = None) -> dict:
    """The ``image-label`` section of a label image: where its image is (a path
    relative to the label group) and, optionally, a colour per label value."""
    version = check_version(version)
    spec = _spec(version)
    types = spec.image_label_types
    colors = None
    if colours:
        colors = tuple(types.Color(label_value=int(k), rgba=tuple(int(c) for c in v))
                       for k, v in sorted(colours.items()))
    model = types.Label(version=version, colors=colors,
                        source=types.Source(image=source) if source is not None else None)
    return _dump(model)


def write_metadata(group, **sections) -> None:
    """Write NGFF metadata (``multiscales=[...]``, ``omero=...``, ``labels=[...]``,
    ``image_label=...``) into ``group`` where its version keeps them: top-level
    attributes in 0.4, under ``ome`` (with the version) in 0.5. Sections
    already there are kept unless given again."""
    fields = {k.replace("_", "-"): v for k, v in sections.items()}
    if group.metadata.zarr_format == 3:
        ome = dict(group.attrs.get("ome", {}))
        ome.update(fields)
        ome["version"] = "0.5"
        group.attrs["ome"] = ome
    else:
        group.attrs.update(fields)


METADATA_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
"""The files that hold Zarr metadata (format 3, then format 2); all else is chunks."""


def attributes_file(group: str | os.PathLike) -> Path:
    """The file that holds the attributes of the group at ``group``: ``zarr.json``
    (format 3) or ``.zattrs`` (format 2)."""
    path = Path(os.fspath(group))
    return path / "zarr.json" if (path / "zarr.json").is_file() else path / ".zattrs"


def array_metadata_file(array: str | os.PathLike) -> Path:
    """The file that describes the array at ``array``: ``zarr.json`` (format 3)
    or ``.zarray`` (format 2)."""
    path = Path(os.fspath(array))
    return path / "zarr.json" if (path / "zarr.json").is_file() else path / ".zarray"


def read_attributes(file: str | os.PathLike) -> dict:
    """The attributes in an :func:`attributes_file` (empty when it has none)."""
    file = Path(os.fspath(file))
    if not file.is_file():
        return {}
    meta = json.loads(file.read_text())
    attrs = meta.get("attributes") if file.name == "zarr.json" else meta
    return dict(attrs) if isinstance(attrs, Mapping) else {}


def with_attributes(file: str | os.PathLike, attrs: Mapping) -> str:
    """The text of an :func:`attributes_file` with ``attrs`` as its attributes."""
    file = Path(os.fspath(file))
    if file.name != "zarr.json":
        return json.dumps(dict(attrs), indent=2)
    meta = json.loads(file.read_text())
    meta["attributes"] = dict(attrs)
    return json.dumps(meta, indent=2)


def metadata(attrs: Mapping) -> dict:
    """The NGFF part of a group's attributes, either version (0.5 nests it under ``ome``)."""
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, Mapping) else dict(attrs)


def validate(path: str | os.PathLike):
    """Check a whole store against the NGFF spec with ome-zarr-models.

    Returns
    -------
    ome_zarr_models object
        What the store validates as (an ``Image``, an ``ImageLabel``, ...), of
        the version its Zarr format gives.

    Raises
    ------
    ValueError
        When it does not validate, with the validation's message.
    """
    import zarr
    from ome_zarr_models import open_ome_zarr

    group = zarr.open_group(os.fspath(path), mode="r")
    version = group_version(group)
    try:
        return open_ome_zarr(group, version=version)
    except Exception as e:  # ome-zarr-models raises several kinds
        raise ValueError(f"{os.fspath(path)} is not a valid NGFF {version} store: {e}") from e
