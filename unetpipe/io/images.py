"""Reading and writing images: TIFF, Zarr and OME-Zarr, lazily and atomically.

Readers return a :class:`LazyImage`: a Dask array in a canonical axis order
(channel first when there is one, then z, y, x), the physical pixel size of
the spatial axes and its unit. Nothing is read until the array is computed,
and then only the chunks that are needed.

Writers produce OME-Zarr in either NGFF version (0.4 on Zarr format 2, the
default, or 0.5 on Zarr format 3; :mod:`unetpipe.io.ngff`) with level 0 at
array path ``"0"``, an optional downsampled pyramid, and NGFF image-label
groups; and ImageJ / OME-TIFF files. Every writer writes to a temporary name beside the
destination and renames it into place when complete, so an output that
exists is whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from . import ngff
from .ngff import create_array
from .ngff import metadata as ngff_metadata

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")

# Length units to micrometres; NGFF names them in full.
_UNIT_TO_UM = {
    "micrometer": 1.0, "micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "\\u00b5m": 1.0, "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3,
    "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6, "angstrom": 1e-4, "å": 1e-4,
}


@dataclass(frozen=True)
class LazyImage:
    """An image or label image read lazily.

    Attributes
    ----------
    data : dask.array.Array
        The pixels, axes in the order given by ``axes``.
    axes : str
        Canonical axis letters: an optional ``"c"`` first, then ``"zyx"`` or ``"yx"``.
    spacing : tuple of float
        Physical size of a pixel along each spatial axis (z, y, x or y, x).
    unit : str or None
        ``"micrometer"`` when the spacing is calibrated, None for pixel units.
    path : str
        Where the image came from.
    metadata : dict
        Format-specific extras (for OME-Zarr, the group's attributes).
    origin : tuple of float
        Physical position of the first pixel along each spatial axis, in the
        unit of ``spacing`` (an OME-Zarr ``translation``; zeros otherwise).
    """

    data: object
    axes: str
    spacing: tuple[float, ...]
    unit: str | None
    path: str
    metadata: dict = field(default_factory=dict, compare=False)
    origin: tuple[float, ...] | None = None

    def __post_init__(self):
        n = len(self.axes.replace("c", ""))
        origin = (0.0,) * n if self.origin is None else tuple(float(v) for v in self.origin)
        if len(origin) != n:
            raise ValueError(f"origin {origin} does not match the spatial axes of {self.axes!r}")
        object.__setattr__(self, "origin", origin)
        dtype = np.dtype(self.data.dtype)
        if dtype.kind == "c":
            raise InputError(self.path, f"holds complex values ({dtype}); unetpipe reads "
                                        "real-valued images only (take the magnitude or the "
                                        "real part first)")
        if dtype.kind not in "biuf":
            raise InputError(self.path, f"holds values of type {dtype}, not numbers")

    @property
    def spatial_axes(self) -> str:
        return self.axes.replace("c", "")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(s for a, s in zip(self.axes, self.data.shape, strict=True) if a != "c")

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions, 2 or 3."""
        return len(self.spatial_axes)


def label_dtype(dtype) -> np.dtype:
    """The unsigned integer type instance labels of ``dtype`` are stored as."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.itemsize > 4 or dtype.kind == "i":
        return np.dtype(np.uint32) if dtype.itemsize <= 4 else np.dtype(np.uint64)
    return dtype


def check_label_block(block: np.ndarray, *, path: str, dtype=None) -> np.ndarray:
    """A block of instance labels, checked: finite, whole, not negative.

    Parameters
    ----------
    block : ndarray
        Label ids (any real dtype).
    path : str
        The file, named in the error.
    dtype : numpy dtype, optional
        Cast the checked block to it (default: as it is).

    Raises
    ------
    InputError
        NaN or infinite values, fractions (0.5), or negative values.

    Examples
    --------
    >>> check_label_block(np.array([0.0, 2.0]), path="l.tif", dtype=np.uint32)
    array([0, 2], dtype=uint32)
    """
    if np.issubdtype(block.dtype, np.floating):
        if not np.isfinite(block).all():
            raise InputError(path, "labels contain non-integer values (NaN or infinite); "
                                   "give instance ids (0 = background)")
        if (block != np.round(block)).any():
            raise InputError(path, "labels contain non-integer values (such as 0.5); give "
                                   "instance ids (0 = background)")
    if block.size and block.min() < 0:
        raise InputError(path, "labels contain negative values; give instance ids "
                               "(0 = background)")
    return block if dtype is None else block.astype(dtype, copy=False)


def checked_labels(image: LazyImage):
    """The labels of ``image`` as an unsigned integer Dask array, each chunk checked
    with :func:`check_label_block` when it is read."""
    import dask.array as da

    data = da.asarray(image.data)
    dtype = label_dtype(data.dtype)
    return data.map_blocks(check_label_block, path=image.path, dtype=dtype,
                           meta=np.empty((0,) * data.ndim, dtype))


# --- reading ------------------------------------------------------------------


class _GuardedArray:
    """Array-like wrapper that reports read failures as :class:`InputError`.

    Corrupt or truncated files often open fine and fail only when a chunk is
    decoded, deep inside a Dask task; this turns that into a message that
    names the file.
    """

    def __init__(self, array, path: str, owner=None):
        self._array = array
        self._path = path
        self._owner = owner  # an open TiffFile the array reads from, closed with it
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __del__(self):
        if self._owner is not None:
            with contextlib.suppress(Exception):
                self._owner.close()

    def __getitem__(self, key):
        try:
            return np.asarray(self._array[key])
        except InputError:
            raise
        except Exception as e:
            raise InputError(self._path, f"cannot read pixel data ({type(e).__name__}: {e})") from e


def _as_dask(array, path: str, chunks, owner=None):
    import dask.array as da

    return da.from_array(_GuardedArray(array, path, owner), chunks=chunks, asarray=False,
                         fancy=False, name=f"read-{uuid.uuid4().hex}")


class _ContiguousTiff:
    """Region reads from an uncompressed TIFF whose pixels are one contiguous block.

    This is what tifffile and ImageJ write by default, often as one strip per
    plane. Reading through tifffile would decode a whole plane for any region
    of it; here a region costs only its own rows, read through a memory map
    that lives only for the read.
    """

    def __init__(self, path: str, offset: int, shape, file_dtype):
        self.path = path
        self.offset = offset
        self.shape = tuple(shape)
        self.file_dtype = np.dtype(file_dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        mm = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset,
                       shape=self.shape)
        try:
            return np.array(mm[key], dtype=self.dtype)
        finally:
            del mm


def _row_chunks(shape, itemsize: int, target_bytes: int = 32 * 2**20) -> tuple[int, ...]:
    """Chunks of whole rows (last axes complete) of about ``target_bytes``."""
    chunks = list(shape)
    size = math.prod(shape) * itemsize
    for axis in range(len(shape) - 1):
        if size <= target_bytes:
            break
        size //= shape[axis]
        fit = max(1, target_bytes // max(size, 1))
        chunks[axis] = min(shape[axis], fit)
        if chunks[axis] > 1:
            break
    return tuple(chunks)


def _open_tiff(path: str):
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:
        raise InputError(path, f"not a readable TIFF file ({e})") from None
    if not tif.series:
        tif.close()
        raise InputError(path, "not a readable TIFF file (it holds no image)")
    return tif


def _unit_scale(unit) -> float | None:
    if unit is None:
        return None
    key = str(unit).strip().lower()
    return _UNIT_TO_UM.get(key)


def _tiff_spacing(tif) -> tuple[dict, str | None]:
    """Per-axis spacing (letter -> micrometres) from ImageJ or OME metadata."""
    spacing: dict[str, float] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = None
        if root is not None:
            pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
        if pixels is not None:
            for letter in "zyx":
                value = pixels.get(f"PhysicalSize{letter.upper()}")
                unit = pixels.get(f"PhysicalSize{letter.upper()}Unit", "µm")
                scale = _unit_scale(unit)
                if value is not None and scale is not None and float(value) > 0:
                    spacing[letter] = float(value) * scale
        return spacing, ("micrometer" if spacing else None)
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        scale = _unit_scale(meta.get("unit"))
        if scale is None:
            return {}, None
        page = tif.pages.first
        for letter, tag in (("x", "XResolution"), ("y", "YResolution")):
            res = page.tags.get(tag)
            if res is not None:
                num, den = res.value
                if num > 0 and den > 0:
                    spacing[letter] = den / num * scale
        # ImageJ leaves out a z step of 1.0 when it saves a calibrated stack.
        spacing["z"] = float(meta.get("spacing") or 1.0) * scale
        return spacing, "micrometer"
    # Plain TIFF resolution tags are usually a screen DPI, not a pixel size.
    return {}, None


_TIFF_AXIS = {"X": "x", "Y": "y", "Z": "z", "C": "c", "S": "c", "T": "t"}


def _read_tiff(path: str):
    tif = _open_tiff(path)
    series = tif.series[0]
    raw_axes = "".join(_TIFF_AXIS.get(a, "?") for a in series.axes)
    spacing, unit = _tiff_spacing(tif)
    meta = {"tiff_axes": series.axes}
    offset = series.dataoffset
    if offset is not None and tif.pages.first.compression == 1:
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        array = _ContiguousTiff(path, offset, series.shape, dtype)
        tif.close()
        if os.path.getsize(path) < offset + math.prod(series.shape) * dtype.itemsize:
            raise InputError(path, "the TIFF file is truncated (shorter than its pixel data)")
        data = _as_dask(array, path, _row_chunks(array.shape, dtype.itemsize))
        return data, raw_axes, spacing, unit, meta
    try:
        import zarr

        store = series.aszarr()
        array = zarr.open_array(store, mode="r")
    except Exception as e:
        tif.close()
        raise InputError(path, f"cannot read the TIFF image data ({e})") from None
    # The store reads from the open file: it is closed when the array goes.
    data = _as_dask(array, path, array.chunks, owner=tif)
    return data, raw_axes, spacing, unit, meta


def _ngff_attrs(group) -> dict | None:
    attrs = dict(group.attrs)
    if "ome" in attrs and isinstance(attrs["ome"], Mapping):
        return dict(attrs["ome"])
    if "multiscales" in attrs:
        return attrs
    return None


def _read_zarr(path: str):
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as e:
        raise InputError(path, f"not a readable Zarr store ({e})") from None
    if isinstance(node, zarr.Array):
        names = (getattr(node.metadata, "dimension_names", None)
                 or node.attrs.get(ngff.DIMENSIONS_ATTRIBUTE) or [None] * node.ndim)
        if not isinstance(names, list | tuple) or len(names) != node.ndim:
            names = [None] * node.ndim
        letters = "".join(n.lower() if isinstance(n, str) and n.lower() in ("t", "c", "z", "y", "x")
                          else "?" for n in names)
        data = _as_dask(node, path, node.chunks)
        return data, letters, {}, None, {}
    attrs = dict(node.attrs)
    layout = attrs.get("bioformats2raw.layout", dict(attrs.get("ome", {})).get(
        "bioformats2raw.layout"))
    if layout is not None and "0" in node:
        # bioformats2raw: the root only lists series; the first image is "0".
        node = node["0"]
    meta = _ngff_attrs(node)
    if meta is None or not meta.get("multiscales"):
        arrays = [name for name, _ in node.arrays()]
        raise InputError(
            path,
            "is a Zarr group without OME-Zarr multiscales metadata; point at an array inside it"
            + (f" (it holds: {', '.join(sorted(arrays))})" if arrays else ""),
        )
    ms = meta["multiscales"][0]
    axes = [a["name"] if isinstance(a, Mapping) else str(a) for a in ms.get("axes", [])]
    units = [a.get("unit") if isinstance(a, Mapping) else None for a in ms.get("axes", [])]
    dataset = ms["datasets"][0]
    try:
        array = node[dataset["path"]]
    except KeyError:
        raise InputError(path, f"OME-Zarr level {dataset['path']!r} is missing") from None
    if not axes:  # NGFF <= 0.3 had no axes: the order was fixed
        axes = list("tczyx"[-array.ndim:])
    if len(axes) != array.ndim:
        raise InputError(path, f"OME-Zarr names {len(axes)} axes for a {array.ndim}-D array")
    scale, translation = _transforms(dataset, ms, array.ndim)
    spacing, origin, unit = {}, {}, None
    calibrated = all(_unit_scale(units[i]) is not None
                     for i, a in enumerate(axes) if a.lower() in ("z", "y", "x"))
    for i, a in enumerate(axes):
        a = a.lower()
        if a in ("z", "y", "x"):
            factor = _unit_scale(units[i]) if calibrated else 1.0
            spacing[a] = float(scale[i]) * factor
            origin[a] = float(translation[i]) * factor
    if calibrated:
        unit = "micrometer"
    letters = "".join(a.lower() if a.lower() in ("t", "c", "z", "y", "x") else "?" for a in axes)
    data = _as_dask(array, path, array.chunks)
    return data, letters, spacing, unit, {"ngff": meta, "origin": origin}


def _transforms(dataset: Mapping, ms: Mapping, ndim: int) -> tuple[list[float], list[float]]:
    """The scale and translation of one level of an NGFF multiscale: the level's
    own transformations, then those of the whole multiscale applied after them."""
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for transforms in (dataset.get("coordinateTransformations") or [],
                       ms.get("coordinateTransformations") or []):
        for t in transforms:
            if not isinstance(t, Mapping):
                continue
            if t.get("type") == "scale" and len(t.get("scale") or ()) == ndim:
                factors = [float(v) for v in t["scale"]]
                scale = [a * b for a, b in zip(scale, factors, strict=True)]
                translation = [a * b for a, b in zip(translation, factors, strict=True)]
            elif t.get("type") == "translation" and len(t.get("translation") or ()) == ndim:
                translation = [a + float(b) for a, b in
                               zip(translation, t["translation"], strict=True)]
    return scale, translation


def _canonical(path: str, data, raw_axes: str, override: str | None, *, labels: bool):
    """Resolve the axes and bring the array into (c,) (z,) y, x order."""
    if override:
        override = override.lower()
        if len(override) != data.ndim:
            raise InputError(
                path,
                f"data.axes is {override!r} ({len(override)} axes) but the file has "
                f"{data.ndim} dimensions of shape {tuple(data.shape)}",
            )
        axes = override
    else:
        axes = raw_axes
        unknown = axes.count("?")
        if data.ndim == 2 and unknown:
            axes = "yx"
        elif data.ndim == 3 and axes in ("???", "?yx"):
            # A stack without metadata is, far more often than not, planes in z.
            log.warning("%s: no axis metadata; reading the %d planes as z (set data.axes to "
                        "override)", path, int(data.shape[0]))
            axes = "zyx"
        elif unknown:
            raise InputError(
                path,
                f"cannot tell the axes of this {data.ndim}-D image of shape {tuple(data.shape)}"
                " (no metadata); set data.axes, e.g. 'zyx', 'cyx' or 'czyx'",
            )
    if len(set(axes)) != len(axes):
        raise InputError(path, f"axes {axes!r} repeat a letter")
    if not {"y", "x"} <= set(axes):
        raise InputError(path, f"axes {axes!r} lack y or x")
    # Singleton time points and planes carry no information: drop them.
    index = []
    kept = ""
    for i, a in enumerate(axes):
        if a == "t":
            if data.shape[i] != 1:
                raise InputError(path, f"has {data.shape[i]} time points; unetpipe segments one "
                                       "time point per file (split the series first)")
            index.append(0)
        elif a == "z" and data.shape[i] == 1:
            index.append(0)
        else:
            index.append(slice(None))
            kept += a
    data = data[tuple(index)]
    order = [kept.index(a) for a in "czyx" if a in kept]
    data = data.transpose(order)
    axes = "".join(kept[i] for i in order)
    if labels and "c" in axes:
        if data.shape[0] != 1:
            raise InputError(path, f"labels must have one channel, this file has {data.shape[0]}")
        data, axes = data[0], axes[1:]
    return data, axes


def read_image(path: str | os.PathLike, *, axes: str | None = None,
               labels: bool = False) -> LazyImage:
    """Open an image lazily.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file (``.tif``/``.tiff``, including ImageJ hyperstacks and
        OME-TIFF), a Zarr array, or an OME-Zarr image (NGFF 0.4 or 0.5).
    axes : str, optional
        Axis letters from ``tczyx``, one per dimension of the stored array,
        overriding the metadata.
    labels : bool
        Read a label image: it must have no channel axis beyond a singleton.

    Returns
    -------
    LazyImage
        With a Dask array whose chunks follow the file's own (TIFF pages or
        tiles, Zarr chunks).

    Raises
    ------
    InputError
        For a missing, unreadable or unsupported file, or axes that cannot be
        resolved to 2 or 3 spatial dimensions.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    lower = path.lower().rstrip("/\\")
    if os.path.isdir(path):
        data, raw_axes, spacing, unit, meta = _read_zarr(path)
    elif lower.endswith(TIFF_SUFFIXES):
        data, raw_axes, spacing, unit, meta = _read_tiff(path)
    else:
        raise InputError(path, "unsupported file type (expected .tif, .tiff, .zarr or .ome.zarr)")
    data, axes_out = _canonical(path, data, raw_axes, axes, labels=labels)
    spatial = axes_out.replace("c", "")
    if len(spatial) not in (2, 3):
        raise InputError(path, f"has {len(spatial)} spatial dimensions ({spatial}); "
                               "expected 2 (yx) or 3 (zyx)")
    if min(data.shape) == 0:
        raise InputError(path, f"is empty (shape {tuple(data.shape)})")
    to_unit = dict.fromkeys(spatial, 1.0)  # the origin's values -> the spacing's unit
    if any(a not in spacing for a in spatial):
        if spacing:
            log.warning("%s: the metadata give the pixel size of %s but not of %s; using pixel "
                        "units (set data.spacing)", path, "".join(sorted(spacing)),
                        "".join(a for a in spatial if a not in spacing))
        spacing_t, unit = tuple(1.0 for _ in spatial), None
        to_unit = {a: 1.0 / float(spacing.get(a) or 1.0) for a in spatial}
    else:
        spacing_t = tuple(float(spacing[a]) for a in spatial)
    found = meta.get("origin") or {}
    origin = tuple(float(found.get(a, 0.0)) * to_unit[a] for a in spatial)
    return LazyImage(data=data, axes=axes_out, spacing=spacing_t, unit=unit, path=path,
                     metadata=meta, origin=origin)


def read_labels(path: str | os.PathLike, *, axes: str | None = None) -> LazyImage:
    """Open an instance label image lazily; see :func:`read_image`."""
    image = read_image(path, axes=axes, labels=True)
    dtype = image.data.dtype
    if dtype.kind == "b":
        raise InputError(image.path, "labels are a binary mask, not instance labels "
                                     "(give each object its own integer id)")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(image.path, f"labels must be integers, not {dtype}")
    return image


# --- atomic outputs -----------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On an exception the temporary file or folder is removed and ``path`` is
    left as it was, so a partial output never looks finished. An existing
    ``path`` is replaced only once the new one is complete.
    """
    dest = Path(os.fspath(path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to {tmp}")
    replace_path(tmp, dest)


def replace_path(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename a finished file or folder ``src`` to ``dest``, replacing what is there.

    A file replaces a file in one atomic step. A folder cannot be renamed over
    a non-empty folder, so an existing ``dest`` is first moved aside and
    removed afterwards: ``dest`` is then missing for an instant, but never
    partial.
    """
    src, dest = Path(os.fspath(src)), Path(os.fspath(dest))
    if src.is_file() and not dest.is_dir():
        os.replace(src, dest)
    elif dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(src, dest)
        _remove(old)
    else:
        os.replace(src, dest)


# --- OME-Zarr writing ---------------------------------------------------------


def _axes_metadata(axes: str, unit: str | None) -> list[dict]:
    out = []
    for a in axes:
        if a == "c":
            out.append({"name": "c", "type": "channel"})
        else:
            entry = {"name": a, "type": "space"}
            if unit:
                entry["unit"] = unit
            out.append(entry)
    return out


def default_chunks(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Chunk shape for a preprocessed store: 1024^2 for images, 64x256^2 for stacks."""
    base = (1024, 1024) if len(spatial_shape) == 2 else (64, 256, 256)
    return tuple(min(b, s) for b, s in zip(base, spatial_shape, strict=True))


def _level_factors(axes: str, spacing: Sequence[float],
                   shape: Sequence[int]) -> tuple[tuple[int, ...], list[float]]:
    """Per-axis factors for the next pyramid level and the new spacing.

    y and x are halved; z is halved while it is finer than the new y and x
    and has at least two planes.
    """
    spatial = axes.replace("c", "")
    new_spacing = list(spacing)
    factors = []
    yi = spatial.index("y")
    new_y = spacing[yi] * 2
    for a, size in zip(axes, shape, strict=True):
        if a == "c":
            factors.append(1)
            continue
        i = spatial.index(a)
        if a in "yx" or (a == "z" and spacing[i] < new_y and size >= 2):
            factors.append(2)
            new_spacing[i] = spacing[i] * 2
        else:
            factors.append(1)
    return tuple(factors), new_spacing


BAND_BYTES = 128 * 2**20


def _bands(shape: Sequence[int], chunks: Sequence[int], itemsize: int,
           max_bytes: int) -> Iterator[tuple[slice, ...]]:
    """Chunk-aligned boxes covering ``shape``, each at most ``max_bytes`` (or one chunk).

    A box grows from one chunk along the last axis, then the one before it,
    and so on, so that it stays a contiguous run of whole chunks.
    """
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    span = [1] * len(shape)
    size = math.prod(chunks) * itemsize
    for axis in reversed(range(len(shape))):
        fit = max(1, max_bytes // size) if size <= max_bytes else 1
        span[axis] = min(grid[axis], fit)
        size *= span[axis]
        if span[axis] < grid[axis]:
            break
    starts = [range(0, g, n) for g, n in zip(grid, span, strict=True)]
    for index in np.ndindex(*[len(r) for r in starts]):
        yield tuple(
            slice(starts[a][i] * chunks[a], min(shape[a], (starts[a][i] + span[a]) * chunks[a]))
            for a, i in enumerate(index)
        )


def store(data, target, *, transform=None, progress: str | None = None,
           max_bytes: int | None = None) -> None:
    """Compute a Dask array into a Zarr array band by band, in bounded memory.

    Each band is a box of whole output chunks of at most ``max_bytes``
    (default :data:`BAND_BYTES`), aligned to the source's chunks where one of
    those fits, computed into one buffer (Dask reads the
    source chunks it overlaps, in parallel) and written chunk by chunk by as
    many threads as Dask uses; ``transform``, if given, maps each chunk's
    block of the buffer to what is stored (a normalisation, a check), so
    element-wise work never spans more than one output chunk. Memory thus
    depends on the band size and the source's chunk size, never on the
    array's size: a source chunked differently from the output (TIFF pages,
    say) is read once per band it overlaps instead of being held whole.
    """
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.array as da

    from ..core.progress import bar

    max_bytes = BAND_BYTES if max_bytes is None else max_bytes
    chunks = target.chunks
    # Bands follow the source's chunks when one of them (rounded up to whole
    # output chunks) fits the budget: each source chunk is then decoded once.
    unit = tuple(min(n, math.ceil(max(src) / c) * c)
                 for n, src, c in zip(data.shape, data.chunks, chunks, strict=True))
    if math.prod(unit) * data.dtype.itemsize > max_bytes:
        unit = chunks
    bands = list(_bands(data.shape, unit, data.dtype.itemsize, max_bytes))
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            bar(total=len(bands), desc=progress or "write", unit="band", disable=progress is None,
                leave=False) as pbar:
        for region in bands:
            buffer = np.empty([s.stop - s.start for s in region], dtype=data.dtype)
            da.store(data[region], buffer, lock=False)
            boxes = list(_bands(buffer.shape, chunks, 1, 0))  # one box per chunk

            def write(box, region=region, buffer=buffer):
                block = buffer[box] if transform is None else transform(buffer[box])
                target[tuple(slice(r.start + b.start, r.start + b.stop)
                             for r, b in zip(region, box, strict=True))] = block

            list(pool.map(write, boxes))
            del buffer
            pbar.update(1)


def write_multiscale(group, data, *, axes: str, spacing: Sequence[float], unit: str | None,
                     chunks: Sequence[int], levels: int = 0, name: str | None = None,
                     labels: bool = False, min_size: int = 32, transform=None, dtype=None,
                     progress: str | None = None, origin: Sequence[float] | None = None,
                     channel_names: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """Write an NGFF multiscale image into an open Zarr group.

    Level 0 is computed from ``data`` chunk by chunk; each further level is
    computed from the level written before it (mean of 2x2(x2) blocks for
    images, every second pixel for labels), never from the full data. The
    group's Zarr format gives the NGFF version (:mod:`unetpipe.io.ngff`).

    Parameters
    ----------
    group : zarr.Group
        An empty group (Zarr format 2 for NGFF 0.4, 3 for 0.5).
    data : dask.array.Array
        The image, axes as in ``axes``.
    axes : str
        ``"cyx"``, ``"czyx"``, ``"yx"`` or ``"zyx"``.
    spacing : sequence of float
        Pixel size per spatial axis.
    unit : str or None
        NGFF unit name of the spatial axes, e.g. ``"micrometer"``.
    chunks : sequence of int
        Chunk shape of the spatial axes; channels are stored together.
    levels : int
        Number of downsampled levels to add (fewer if a level would fall
        below ``min_size`` pixels along y or x).
    labels : bool
        Downsample by picking pixels instead of averaging.
    transform : callable, optional
        Applied to each level-0 chunk before it is stored (see :func:`store`).
    dtype : numpy dtype, optional
        Stored dtype, when ``transform`` changes it.
    origin : sequence of float, optional
        Physical position of the first pixel per spatial axis (an NGFF
        ``translation``); none is written when it is zero.
    channel_names : sequence of str, optional
        Names of the channels, written as ``omero`` channel labels.

    Returns
    -------
    list of tuple of int
        The shape of every level written.
    """
    stored_dtype = np.dtype(dtype if dtype is not None else data.dtype)
    full_chunks = _full_chunks(axes, chunks, data.shape)
    arr = create_array(group, "0", shape=data.shape, chunks=full_chunks, dtype=stored_dtype,
                       axes=axes)
    store(data, arr, transform=transform, progress=progress)
    return add_levels(group, axes=axes, spacing=spacing, unit=unit, levels=levels, name=name,
                      labels=labels, min_size=min_size, origin=origin,
                      channel_names=channel_names)


def _full_chunks(axes: str, chunks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Chunks of every axis: the spatial ones as given, channels together."""
    spatial = axes.replace("c", "")
    return tuple(shape[i] if a == "c" else min(int(chunks[spatial.index(a)]), shape[i])
                 for i, a in enumerate(axes))


def pyramid_depth(shape: Sequence[int], chunks: Sequence[int], *, min_size: int = 32) -> int:
    """How many levels to add below one of ``shape`` (spatial axes, y and x last) so
    that the coarsest fits one chunk in y and x, or stops at ``min_size`` pixels."""
    yx, chunk_yx = list(shape[-2:]), list(chunks[-2:])
    depth = 0
    while any(n > c for n, c in zip(yx, chunk_yx, strict=True)) and min(yx) // 2 >= min_size:
        yx = [n // 2 for n in yx]
        depth += 1
    return depth


def add_levels(group, *, axes: str, spacing: Sequence[float], unit: str | None,
               levels: int, name: str | None = None, labels: bool = False,
               min_size: int = 32, origin: Sequence[float] | None = None,
               channel_names: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """Add up to ``levels`` downsampled levels below the array ``"0"`` of ``group``
    (each from the one before, in bounded memory) and write the multiscale
    metadata of all of them; see :func:`write_multiscale`.

    Returns
    -------
    list of tuple of int
        The shape of every level, level 0 first.
    """
    import dask.array as da

    level0 = group["0"]
    stored_dtype = np.dtype(level0.dtype)
    full_chunks = tuple(level0.chunks)
    shapes = [tuple(level0.shape)]
    level_spacing = [float(v) for v in spacing]
    spatial = axes.replace("c", "")
    origin0 = [0.0] * len(spatial) if origin is None else [float(v) for v in origin]

    def per_axis(values, fill):
        return [fill if a == "c" else float(values[spatial.index(a)]) for a in axes]

    scales = [per_axis(level_spacing, 1.0)]
    translations = [per_axis(origin0, 0.0)]
    for level in range(1, levels + 1):
        factors, new_spacing = _level_factors(axes, level_spacing, shapes[-1])
        new_shape = tuple(s // f for s, f in zip(shapes[-1], factors, strict=True))
        yx = [new_shape[axes.index(a)] for a in "yx"]
        if min(yx) < min_size or min(new_shape) < 1:
            break
        prev = da.from_zarr(group[str(level - 1)])
        trimmed = prev[tuple(slice(0, n * f) for n, f in zip(new_shape, factors, strict=True))]
        if labels:
            source = trimmed[tuple(slice(None, None, f) for f in factors)]
        else:
            # Average within the stored chunks, so each task reads one chunk;
            # only chunks of odd size need a rechunk first.
            if any(c % f for f, cs in zip(factors, trimmed.chunks, strict=True) for c in cs):
                trimmed = trimmed.rechunk(tuple(
                    min(c * f, s) for c, f, s in zip(full_chunks, factors, trimmed.shape,
                                                     strict=True)))
            source = da.coarsen(np.mean, trimmed, dict(enumerate(factors)), trim_excess=True)
            source = source.astype(stored_dtype)
        level_spacing = new_spacing
        arr = create_array(group, str(level), shape=source.shape,
                           chunks=tuple(min(c, s) for c, s in
                                        zip(full_chunks, source.shape, strict=True)),
                           dtype=stored_dtype, axes=axes)
        store(source, arr)
        shapes.append(tuple(source.shape))
        scales.append(per_axis(level_spacing, 1.0))
        # a picked pixel sits where its level-0 pixel does; a mean sits at the
        # centre of the pixels it averages
        translations.append(per_axis(
            origin0 if labels else [o + (s - s0) / 2 for o, s, s0 in
                                    zip(origin0, level_spacing, spacing, strict=True)], 0.0))
    set_multiscale_metadata(group, axes=axes, unit=unit, scales=scales, name=name,
                            kind="nearest" if labels else "mean", translations=translations,
                            channel_names=channel_names)
    return shapes


def set_multiscale_metadata(group, *, axes: str, unit: str | None,
                            scales: Sequence[Sequence[float]], name: str | None = None,
                            kind: str = "mean",
                            translations: Sequence[Sequence[float]] | None = None,
                            channel_names: Sequence[str] | None = None) -> None:
    """Write NGFF multiscale metadata for arrays ``"0"``, ``"1"``, ... of ``group``,
    in the NGFF version of the group's Zarr format.

    ``scales`` (and ``translations``, if given) hold one entry per level, one
    value per axis of ``axes`` (1 and 0 for a channel axis); ``kind`` says
    how the levels were made (``"mean"``, ``"nearest"`` for labels);
    ``channel_names`` become ``omero`` channel labels.
    """
    sections = {"multiscales": [ngff.multiscale(
        ngff.group_version(group), axes=axes, unit=unit, scales=scales,
        translations=translations, name=name, kind=kind)]}
    if channel_names is not None:
        sections["omero"] = ngff.channels(channel_names)
    ngff.write_metadata(group, **sections)


def write_label_image(root, name: str, data, *, spacing: Sequence[float], unit: str | None,
                      chunks: Sequence[int], levels: int = 0, transform=None,
                      dtype=None, origin: Sequence[float] | None = None) -> None:
    """Add an NGFF image-label ``labels/{name}`` to an OME-Zarr image group.

    ``data`` has the image's spatial shape (no channel axis); see
    :func:`write_multiscale` for the other parameters.
    """
    import zarr

    label_root = root["labels"] if "labels" in root else root.create_group("labels")
    if not isinstance(label_root, zarr.Group):
        raise ValueError("'labels' in this store is not a group")
    listed = list(ngff.metadata(dict(label_root.attrs)).get("labels", []))
    ngff.write_metadata(label_root, labels=[*listed, name])
    group = label_root.create_group(name)
    axes = "zyx"[-data.ndim:]
    write_multiscale(group, data, axes=axes, spacing=spacing, unit=unit, chunks=chunks,
                     levels=levels, name=name, labels=True, transform=transform, dtype=dtype,
                     origin=origin)
    ngff.write_metadata(group, image_label=ngff.image_label(ngff.group_version(group),
                                                            source="../../"))


def write_ome_zarr(path: str | os.PathLike, data, *, axes: str, spacing: Sequence[float],
                   unit: str | None = None, chunks: Sequence[int] | None = None,
                   levels: int = 0, name: str | None = None,
                   labels: Mapping[str, object] | None = None,
                   attrs: Mapping | None = None, progress: str | None = None,
                   version: str | None = None, origin: Sequence[float] | None = None,
                   channel_names: Sequence[str] | None = None) -> Path:
    """Write an image, and optionally label images, as one OME-Zarr store, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, conventionally ending in ``.ome.zarr``.
    data : dask.array.Array or ndarray
        The image; axes as in ``axes`` (``"cyx"``, ``"czyx"``, ``"yx"``, ``"zyx"``).
    axes, spacing, unit, chunks, levels, name, origin, channel_names
        See :func:`write_multiscale`. ``chunks`` defaults to :func:`default_chunks`.
    labels : mapping of str to array, optional
        Label images of the image's spatial shape, stored as NGFF image-labels
        under ``labels/{name}``.
    attrs : mapping, optional
        Extra attributes for the root group (stored under ``"unetpipe"``).
    version : str, optional
        NGFF version, ``"0.4"`` (Zarr format 2) or ``"0.5"`` (Zarr format 3);
        default :data:`unetpipe.io.ngff.DEFAULT_VERSION`.

    Returns
    -------
    pathlib.Path
        The written store.
    """
    import dask.array as da

    data = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    spatial_shape = tuple(s for a, s in zip(axes, data.shape, strict=True) if a != "c")
    chunks = tuple(chunks) if chunks else default_chunks(spatial_shape)
    if len(chunks) != len(spatial_shape):
        raise ValueError(f"chunks {chunks} do not match the {len(spatial_shape)} spatial axes")
    for label_name, label_data in (labels or {}).items():
        if tuple(label_data.shape) != spatial_shape:
            raise ValueError(f"label image {label_name!r} has shape {label_data.shape}, "
                             f"expected {spatial_shape}")
    with atomic_output(path) as tmp:
        root = ngff.new_group(tmp, version)
        write_multiscale(root, data, axes=axes, spacing=spacing, unit=unit, chunks=chunks,
                         levels=levels, name=name, progress=progress, origin=origin,
                         channel_names=channel_names)
        if attrs:
            root.attrs["unetpipe"] = dict(attrs)
        for label_name, label_data in (labels or {}).items():
            ldata = label_data if isinstance(label_data, da.Array) else da.from_array(
                np.asarray(label_data))
            write_label_image(root, label_name, ldata, spacing=spacing, unit=unit,
                              chunks=chunks, levels=levels, origin=origin)
    return Path(os.fspath(path))


# --- TIFF writing ---------------------------------------------------------------


def write_tiff(path: str | os.PathLike, data, *, axes: str, spacing: Sequence[float] | None = None,
               compression: str | None = "zlib") -> Path:
    """Write an array as a TIFF with physical pixel size, atomically.

    ImageJ hyperstacks are written for uint8, uint16 and float32 (what ImageJ
    can hold), OME-TIFF otherwise (e.g. uint32 labels). Either way tifffile,
    Fiji and napari read the axes and the spacing back.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.tif`` file.
    data : ndarray
        The image, axes as in ``axes`` (letters from ``czyx``).
    axes : str
        Axis letters, e.g. ``"yx"``, ``"zyx"``, ``"cyx"``.
    spacing : sequence of float, optional
        Pixel size in micrometres per spatial axis; None = uncalibrated.
    compression : str or None
        tifffile compression (``"zlib"`` by default; None for none).
    """
    import tifffile

    data = np.asarray(data)
    axes = axes.lower()
    if len(axes) != data.ndim:
        raise ValueError(f"axes {axes!r} do not match an array of shape {data.shape}")
    spatial = axes.replace("c", "")
    if spacing is not None and len(spacing) != len(spatial):
        raise ValueError(f"spacing {tuple(spacing)} does not match axes {spatial!r}")
    sp = dict(zip(spatial, spacing, strict=True)) if spacing is not None else {}
    with atomic_output(path) as tmp:
        if data.dtype in (np.uint8, np.uint16, np.float32):
            order = [axes.index(a) for a in "zcyx" if a in axes]  # ImageJ order: TZCYXS
            arr = np.transpose(data, order)
            ij_axes = "".join(axes[i] for i in order).upper()
            metadata = {"axes": ij_axes}
            kwargs = {}
            if sp:
                metadata["unit"] = "um"
                if "z" in sp:
                    metadata["spacing"] = sp["z"]
                kwargs["resolution"] = (1.0 / sp["x"], 1.0 / sp["y"])
            tifffile.imwrite(tmp, arr, imagej=True, metadata=metadata, compression=compression,
                             **kwargs)
        else:
            order = [axes.index(a) for a in "czyx" if a in axes]
            arr = np.transpose(data, order)
            metadata = {"axes": "".join(axes[i] for i in order).upper()}
            for letter, value in sp.items():
                metadata[f"PhysicalSize{letter.upper()}"] = float(value)
                metadata[f"PhysicalSize{letter.upper()}Unit"] = "µm"
            tifffile.imwrite(tmp, arr, ome=True, metadata=metadata, compression=compression)
    return Path(os.fspath(path))


def image_pyramid(path: str | os.PathLike) -> tuple[object, bool, int | None]:
    """An NGFF image as napari image data, lazily: every level of its pyramid.

    Returns
    -------
    data : dask array or list of dask arrays
        The levels, finest first (one array when there is one level); a
        channel axis of length 1 is dropped.
    multiscale : bool
    channel_axis : int or None
        0 when the image has several channels, else None.
    """
    ms = open_multiscale(Path(os.fspath(path)))
    levels, channel_axis = list(ms.levels), None
    if ms.axes.startswith("c"):
        if levels[0].shape[0] == 1:
            levels = [level[0] for level in levels]
        else:
            channel_axis = 0
    data, multiscale = pyramid_data(levels)
    return data, multiscale, channel_axis


def group_attributes(path: Path) -> dict | None:
    """A Zarr group's attributes (format 3 or 2), or None if ``path`` is no group.

    Reads only the metadata file, without opening the store with zarr.
    """
    try:
        v3 = path / "zarr.json"
        if v3.is_file():
            meta = json.loads(v3.read_text())
            if not isinstance(meta, Mapping) or meta.get("node_type") != "group":
                return None
            attrs = meta.get("attributes") or {}
            return dict(attrs) if isinstance(attrs, Mapping) else None
        if (path / ".zgroup").is_file():
            attrs_file = path / ".zattrs"
            attrs = json.loads(attrs_file.read_text()) if attrs_file.is_file() else {}
            return dict(attrs) if isinstance(attrs, Mapping) else None
    except (OSError, ValueError, TypeError):
        return None
    return None


def is_zarr_array(path: Path) -> bool:
    """Whether ``path`` is a Zarr array (format 3 or 2), from its metadata file."""
    try:
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text())
            return isinstance(meta, Mapping) and meta.get("node_type") == "array"
    except (OSError, ValueError, TypeError):
        return False
    return (path / ".zarray").is_file()


@dataclass
class Multiscale:
    """A lazily opened NGFF multiscale image, channel axis (if any) first."""

    levels: list  # dask arrays, finest first
    axes: str  # e.g. "cyx", "zyx"
    scale: tuple[float, ...]  # level 0, spatial axes
    translate: tuple[float, ...]
    units: tuple[str | None, ...]
    name: str | None

    @property
    def spatial_axes(self) -> str:
        return self.axes.replace("c", "")


def open_dask_array(path: Path):
    """A Zarr array as a Dask array, reading only its metadata."""
    import dask.array as da
    import zarr

    array = zarr.open_array(str(path), mode="r")
    # a name of our own: dask would otherwise tokenise the array object
    return da.from_zarr(array, name=f"unetpipe-{path.name}-{uuid.uuid4().hex}")


def open_multiscale(path: Path) -> Multiscale:
    """Open every level of the NGFF multiscale image at ``path`` lazily."""
    attrs = group_attributes(path) or {}
    ms = ngff_metadata(attrs)["multiscales"][0]
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"]
    names = [(a.get("name") if isinstance(a, Mapping) else str(a)).lower() for a in axes_meta]
    units = [a.get("unit") if isinstance(a, Mapping) else None for a in axes_meta]
    datasets = ms["datasets"]
    levels = [open_dask_array(path / d["path"]) for d in datasets]
    if not ms.get("axes"):  # NGFF <= 0.3: a fixed order
        names, units = names[-levels[0].ndim:], units[-levels[0].ndim:]
    scale, translate = _transforms(datasets[0], ms, len(names))
    # a single time point is dropped; a channel axis goes first
    keep = [i for i, a in enumerate(names) if not (a == "t" and levels[0].shape[i] == 1)]
    order = [i for i in keep if names[i] == "c"] + [i for i in keep if names[i] != "c"]
    index = tuple(slice(None) if i in keep else 0 for i in range(len(names)))
    levels = [level[index].transpose([keep.index(i) for i in order]) for level in levels]
    axes = "".join(names[i] for i in order)
    spatial = [i for i in order if names[i] != "c"]
    return Multiscale(
        levels=levels, axes=axes, scale=tuple(scale[i] for i in spatial),
        translate=tuple(translate[i] for i in spatial),
        units=tuple(units[i] for i in spatial), name=ms.get("name"),
    )


def pyramid_data(levels: list):
    """napari's data argument: the pyramid, or its only level."""
    return (list(levels), True) if len(levels) > 1 else (levels[0], False)


def store_kind(path: str | os.PathLike) -> str | None:
    """The stage that wrote a store, from its attributes (a folder of
    :data:`unetpipe.core.layout.STORES`), or None.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr group.

    Returns
    -------
    str or None
        ``"preprocessed"``, ``"probabilities"``, ``"labels"``, ``"targets"``,
        or None when the store does not look like unetpipe's.
    """
    path = Path(os.fspath(path))
    attrs = group_attributes(path)
    if attrs is None:
        return None
    ours = attrs.get("unetpipe")
    if not isinstance(ours, Mapping):
        return None
    if is_zarr_array(path / "targets") and is_zarr_array(path / "weights"):
        return "targets"
    if not ngff_metadata(attrs).get("multiscales"):
        return None
    stage = ours.get("stage")
    if stage == "predict":
        return "probabilities"
    if stage == "segment":
        return "labels"
    if "percentiles" in ours:
        return "preprocessed"
    return None
