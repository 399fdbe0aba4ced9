import json
import os

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from unetpipe.core.errors import InputError
from unetpipe.io import ngff
from unetpipe.io.images import (
    atomic_output,
    default_chunks,
    ngff_metadata,
    read_image,
    read_labels,
    write_ome_zarr,
    write_tiff,
)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


# --- TIFF ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "axes", "shape", "spacing"),
    [
        (np.uint16, "yx", (40, 52), (0.65, 0.65)),
        (np.uint16, "zyx", (6, 40, 52), (2.0, 0.5, 0.25)),
        (np.float32, "zyx", (5, 33, 31), (1.5, 0.3, 0.3)),
        (np.uint8, "cyx", (3, 20, 24), (0.1, 0.2)),
        (np.uint16, "czyx", (2, 4, 20, 24), (3.0, 0.4, 0.4)),
        (np.uint32, "zyx", (4, 30, 20), (1.0, 0.5, 0.5)),  # OME-TIFF
        (np.int32, "yx", (30, 20), (0.25, 0.5)),  # OME-TIFF, anisotropic in-plane
    ],
)
def test_tiff_round_trip_preserves_pixels_axes_spacing(tmp_path, rng, dtype, axes, shape, spacing):
    data = rng.integers(0, 200, size=shape).astype(dtype)
    path = write_tiff(tmp_path / "img.tif", data, axes=axes, spacing=spacing)
    image = read_image(path)
    assert isinstance(image.data, da.Array)
    assert image.axes == axes
    assert image.spacing == pytest.approx(spacing, rel=1e-6)
    assert image.unit == "micrometer"
    np.testing.assert_array_equal(image.data.compute(), data)


def test_imagej_stack_with_unit_step_keeps_its_calibration(tmp_path):
    # ImageJ writes no "spacing" entry when the z step is 1.0
    data = np.zeros((3, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "micron"})
    assert "spacing" not in tifffile.TiffFile(tmp_path / "a.tif").imagej_metadata
    image = read_image(tmp_path / "a.tif")
    assert image.spacing == pytest.approx((1.0, 0.5, 0.5)) and image.unit == "micrometer"


def test_tiff_without_calibration_is_in_pixel_units(tmp_path, rng):
    data = rng.integers(0, 100, size=(3, 16, 16)).astype(np.uint16)
    write_tiff(tmp_path / "a.tif", data, axes="zyx", spacing=None)
    image = read_image(tmp_path / "a.tif")
    assert image.spacing == (1.0, 1.0, 1.0) and image.unit is None


def test_imagej_unit_in_nanometres_is_converted(tmp_path):
    data = np.zeros((3, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, imagej=True, resolution=(1 / 100.0, 1 / 100.0),
                     metadata={"axes": "ZYX", "spacing": 400.0, "unit": "nm"})
    image = read_image(tmp_path / "a.tif")
    assert image.spacing == pytest.approx((0.4, 0.1, 0.1))


def test_ome_tiff_without_z_size_falls_back_to_pixel_units_with_a_warning(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "xy.ome.tif", np.zeros((4, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    image = read_image(tmp_path / "xy.ome.tif")
    assert image.spacing == (1.0, 1.0, 1.0) and image.unit is None
    assert "give the pixel size of xy but not of z" in caplog.text


def test_compressed_multipage_tiff_is_read_lazily_page_by_page(tmp_path, rng):
    data = rng.integers(0, 1000, size=(12, 64, 48)).astype(np.uint16)
    write_tiff(tmp_path / "s.tif", data, axes="zyx", spacing=(1, 1, 1), compression="zlib")
    image = read_image(tmp_path / "s.tif")
    # one chunk per page: a plane is read without touching the others
    assert image.data.chunks[0] == (1,) * 12
    np.testing.assert_array_equal(image.data[7].compute(), data[7])


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_uncompressed_tiff_is_read_by_row_regions(tmp_path, rng, byteorder, monkeypatch):
    import unetpipe.io.images as io

    # a single-strip plane is one TIFF chunk; it is read in bands of rows instead
    data = rng.integers(0, 60000, size=(300, 200)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "flat.tif", data, byteorder=byteorder, rowsperstrip=300)
    monkeypatch.setattr(io, "_row_chunks", lambda shape, itemsize: (64, 200))
    image = read_image(tmp_path / "flat.tif")
    assert image.data.chunks == ((64, 64, 64, 64, 44), (200,))
    assert image.data.dtype == np.uint16 and image.data.dtype.isnative
    np.testing.assert_array_equal(image.data[70:130, 5:9].compute(), data[70:130, 5:9])
    np.testing.assert_array_equal(image.data.compute(), data)


def test_row_chunks_are_about_the_target_size():
    from unetpipe.io.images import _row_chunks

    assert _row_chunks((272, 2048, 2048), 2) == (4, 2048, 2048)  # 32 MiB of whole planes
    assert _row_chunks((12000, 12000), 2) == (1398, 12000)
    assert _row_chunks((3, 8192, 8192), 2) == (1, 2048, 8192)  # planes too big: rows
    assert _row_chunks((5, 64, 64), 2) == (5, 64, 64)


def test_truncated_uncompressed_tiff(tmp_path, rng):
    data = rng.integers(0, 1000, size=(4, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cut.tif", data, photometric="minisblack",
                     metadata={"axes": "ZYX"})
    raw = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut.tif: the TIFF file is truncated"):
        read_image(tmp_path / "cut.tif")


def test_plain_multipage_tiff_is_read_as_zyx(tmp_path, rng, caplog):
    data = rng.integers(0, 1000, size=(5, 20, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", data, metadata=None)
    image = read_image(tmp_path / "plain.tif")
    assert image.axes == "zyx"
    assert "reading the 5 planes as z" in caplog.text


def test_axes_override(tmp_path, rng):
    data = rng.integers(0, 1000, size=(20, 30, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgbish.tif", data, metadata=None, photometric="minisblack",
                     planarconfig="contig")
    image = read_image(tmp_path / "rgbish.tif", axes="yxc")
    assert image.axes == "cyx"
    np.testing.assert_array_equal(image.data.compute(), np.moveaxis(data, -1, 0))
    with pytest.raises(InputError, match=r"data.axes is 'zyxc' \(4 axes\) but the file has 3 dimensions"):
        read_image(tmp_path / "rgbish.tif", axes="zyxc")


def test_rgb_tiff_channels_come_first(tmp_path, rng):
    data = rng.integers(0, 255, size=(20, 30, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif")
    assert image.axes == "cyx"
    np.testing.assert_array_equal(image.data.compute(), np.moveaxis(data, -1, 0))


# --- Zarr and OME-Zarr --------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_array(tmp_path, rng, zarr_format):
    data = rng.random((4, 30, 40), dtype=np.float32)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(2, 16, 16),
                          dtype=data.dtype, zarr_format=zarr_format)
    z[:] = data
    image = read_image(tmp_path / "a.zarr")
    assert image.axes == "zyx" and image.spacing == (1.0, 1.0, 1.0)
    assert image.data.chunks == ((2, 2), (16, 14), (16, 16, 8))
    np.testing.assert_array_equal(image.data.compute(), data)
    image = read_image(tmp_path / "a.zarr", axes="cyx")
    assert image.axes == "cyx"


def test_zarr_v3_dimension_names_give_the_axes(tmp_path, rng):
    data = rng.random((3, 20, 24), dtype=np.float32)
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=data.shape, dtype=data.dtype,
                          dimension_names=["c", "y", "x"])
    z[:] = data
    image = read_image(tmp_path / "c.zarr")
    assert image.axes == "cyx"  # not three planes in z
    # a level of one of our own stores reads back with its axes too
    path = write_ome_zarr(tmp_path / "s.ome.zarr", rng.random((2, 5, 20, 24), dtype=np.float32),
                          axes="czyx", spacing=(1, 1, 1))
    assert read_image(path / "0").axes == "czyx"


def _ngff04_image(group, data, *, path, unit, scale, chunks=None):
    """An NGFF 0.4 tczyx image, as older tools (and bioformats2raw) write them."""
    group.create_array(path, shape=data.shape, dtype=data.dtype,
                       chunks=chunks or data.shape)[:] = data
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
        + [{"name": a, "type": "space", "unit": unit} for a in "zyx"],
        "datasets": [{"path": path, "coordinateTransformations": [
            {"type": "scale", "scale": scale}]}],
    }]


def test_bioformats2raw_layout(tmp_path, rng):
    # what bioformats2raw writes: a Zarr v2 root listing series, NGFF 0.4 image at "0"
    data = rng.random((1, 1, 1, 20, 24), dtype=np.float32)
    root = zarr.open_group(str(tmp_path / "plate.ome.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    _ngff04_image(root.create_group("0"), data, path="0", unit="micrometer",
                  scale=[1, 1, 1, 0.5, 0.5])
    for path in (tmp_path / "plate.ome.zarr", tmp_path / "plate.ome.zarr" / "0"):
        image = read_image(path)
        assert image.axes == "cyx" and image.spacing == (0.5, 0.5)
        np.testing.assert_array_equal(image.data.compute(), data[:, 0, 0])


@pytest.mark.parametrize(
    ("axes", "shape", "spacing"),
    [("cyx", (1, 70, 90), (0.5, 0.25)), ("czyx", (2, 9, 70, 90), (2.0, 0.5, 0.5)),
     ("zyx", (9, 70, 90), (1.0, 1.0, 1.0)), ("yx", (70, 90), (0.3, 0.3))],
)
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trip(tmp_path, rng, axes, shape, spacing, version):
    data = rng.random(shape, dtype=np.float32)
    labels = {"gt": (rng.random(shape[-3:] if "z" in axes else shape[-2:]) * 5).astype(np.uint16)}
    spatial = axes.replace("c", "")
    chunks = (4, 32, 32) if "z" in axes else (32, 32)
    path = write_ome_zarr(tmp_path / "img.ome.zarr", data, axes=axes, spacing=spacing,
                          unit="micrometer", chunks=chunks, levels=1, name="img", labels=labels,
                          version=version)
    image = read_image(path)
    assert image.axes == axes
    assert image.spacing == pytest.approx(spacing)
    np.testing.assert_array_equal(image.data.compute(), data)
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == (2 if version == "0.4" else 3)
    if version == "0.5":  # the metadata under "ome", with the version
        assert root.attrs["ome"]["version"] == "0.5"
        ome = root.attrs["ome"]
    else:  # top-level attributes; the version in each multiscale
        assert "ome" not in root.attrs
        ome = dict(root.attrs)
        assert ome["multiscales"][0]["version"] == "0.4"
    ms = ome["multiscales"][0]
    assert ms["type"] == "mean"
    assert [a["name"] for a in ms["axes"]] == list(axes)
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    level1 = ms["datasets"][1]["coordinateTransformations"][0]["scale"]
    yi = axes.index("y")
    assert level1[yi] == pytest.approx(2 * spacing[spatial.index("y")])
    assert root["0"].chunks[-2:] == (32, 32)
    if version == "0.5":
        assert root["0"].metadata.dimension_names == tuple(axes)
    else:
        assert root["0"].attrs["_ARRAY_DIMENSIONS"] == list(axes)
        assert root["0"].metadata.dimension_separator == "/"
    # the label image: NGFF image-label metadata and nearest-neighbour pyramid
    lab = read_labels(path / "labels" / "gt")
    assert lab.axes == spatial and lab.spacing == pytest.approx(spacing)
    np.testing.assert_array_equal(lab.data.compute(), labels["gt"])
    assert ngff_metadata(root["labels"].attrs)["labels"] == ["gt"]
    label_meta = ngff_metadata(root["labels/gt"].attrs)
    assert label_meta["image-label"]["source"]["image"] == "../../"
    assert label_meta["multiscales"][0]["type"] == "nearest"
    lev1 = np.asarray(root["labels/gt/1"])
    scales = [d["coordinateTransformations"][0]["scale"]
              for d in label_meta["multiscales"][0]["datasets"]]
    steps = [round(b / a) for a, b in zip(scales[0], scales[1], strict=True)]
    # y and x are halved; z only while it is finer than y and x
    assert steps == [2 if a in "yx" or spacing[i] < 2 * spacing[-1] else 1
                     for i, a in enumerate(spatial)]
    sl = tuple(slice(None, f * n, f) for n, f in zip(lev1.shape, steps, strict=True))
    np.testing.assert_array_equal(lev1, labels["gt"][sl])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_is_valid_for_the_reference_readers(tmp_path, rng, version):
    reader = pytest.importorskip("ome_zarr.reader")
    ome_io = pytest.importorskip("ome_zarr.io")
    data = rng.random((1, 6, 64, 80), dtype=np.float32)
    path = write_ome_zarr(tmp_path / "x.ome.zarr", data, axes="czyx", spacing=(2.0, 0.5, 0.5),
                          unit="micrometer", chunks=(3, 32, 32), levels=1,
                          labels={"gt": np.ones((6, 64, 80), np.uint16)}, version=version,
                          channel_names=["dapi"])
    image = ngff.validate(path)  # raises if metadata or arrays break the spec
    assert type(image).__name__ == "Image"
    assert type(image).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
    assert type(ngff.validate(path / "labels" / "gt")).__name__ == "ImageLabel"
    nodes = list(reader.Reader(ome_io.parse_url(str(path)))())
    assert [d.shape for d in nodes[0].data] == [(1, 6, 64, 80), (1, 6, 32, 40)]
    scale = nodes[0].metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == [1.0, 2.0, 0.5, 0.5]
    assert nodes[0].metadata["channel_names"] == ["dapi"]


def test_a_bad_ngff_version_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"io.ngff_version"):
        write_ome_zarr(tmp_path / "x.ome.zarr", np.zeros((8, 8), np.float32), axes="yx",
                       spacing=(1, 1), version="0.6")
    assert not (tmp_path / "x.ome.zarr").exists()


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_translation_is_read_and_written(tmp_path, rng, version):
    """An OME-Zarr's translation is the image's origin; its levels keep their pixels'
    centres where they are (a mean sits between the pixels it averages)."""
    data = rng.random((1, 64, 80), dtype=np.float32)
    path = write_ome_zarr(tmp_path / "t.ome.zarr", data, axes="cyx", spacing=(0.5, 0.25),
                          unit="micrometer", levels=1, origin=(100.0, -3.0), version=version,
                          labels={"gt": np.ones((64, 80), np.uint8)})
    image = read_image(path)
    assert image.origin == pytest.approx((100.0, -3.0))
    assert read_labels(path / "labels" / "gt").origin == pytest.approx((100.0, -3.0))
    ms = ngff_metadata(zarr.open_group(str(path), mode="r").attrs)["multiscales"][0]
    transforms = [{t["type"]: t[t["type"]] for t in d["coordinateTransformations"]}
                  for d in ms["datasets"]]
    assert transforms[1]["scale"] == [1.0, 1.0, 0.5]
    assert transforms[1]["translation"] == pytest.approx([0.0, 100.25, -2.875])
    ngff.validate(path)
    # a translation in nanometres, read in micrometres; none at all reads as zero
    root = zarr.open_group(str(tmp_path / "nm.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=(8, 8), dtype=np.uint8, chunks=(8, 8))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "yx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [100, 100]}, {"type": "translation",
                                                      "translation": [2000, 500]}]}]}]
    image = read_image(tmp_path / "nm.ome.zarr")
    assert image.spacing == pytest.approx((0.1, 0.1))
    assert image.origin == pytest.approx((2.0, 0.5))
    assert read_image(tmp_path / "t.ome.zarr" / "0").origin == (0.0, 0.0)


def test_ngff_04_zarr_v2_is_read(tmp_path, rng):
    data = rng.random((1, 3, 24, 24), dtype=np.float32)
    root = zarr.open_group(str(tmp_path / "old.ome.zarr"), mode="w", zarr_format=2)
    _ngff04_image(root, data[:, None], path="s0", unit="nanometer",
                  scale=[1, 1, 500, 100, 100], chunks=(1, 1, 3, 12, 12))
    image = read_image(tmp_path / "old.ome.zarr")
    assert image.axes == "czyx"
    assert image.spacing == pytest.approx((0.5, 0.1, 0.1))
    np.testing.assert_array_equal(image.data.compute(), data)


def test_ome_zarr_2d_stored_as_tczyx_is_2d(tmp_path, rng):
    data = rng.random((1, 1, 1, 20, 30), dtype=np.float32)
    root = zarr.open_group(str(tmp_path / "flat.ome.zarr"), mode="w", zarr_format=3)
    root.create_array("0", shape=data.shape, chunks=data.shape, dtype=data.dtype)[:] = data
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": t} for n, t in
                 zip("tczyx", ["time", "channel", "space", "space", "space"], strict=True)],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1, 1, 1]}]}]}]}
    image = read_image(tmp_path / "flat.ome.zarr")
    assert image.axes == "cyx" and image.data.shape == (1, 20, 30)
    assert image.unit is None  # no units given: pixel units


# --- bad input ----------------------------------------------------------------


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tif: file not found"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(tmp_path / "a.png")


def test_corrupt_tiff_names_the_file(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(InputError, match=r"junk.tif: not a readable TIFF file"):
        read_image(tmp_path / "junk.tif")


def test_truncated_tiff_fails_when_read_with_a_clear_message(tmp_path, rng):
    data = rng.integers(0, 1000, size=(8, 64, 64)).astype(np.uint16)
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "ZYX"})
    raw = path.read_bytes()
    # keep the header and IFDs, zero the compressed strips of the middle planes
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[3].dataoffsets[0]
    path.write_bytes(raw[:offset] + b"\0" * (len(raw) - offset - 2000) + raw[-2000:])
    image = read_image(path)
    with pytest.raises(InputError, match=r"cut.tif: cannot read pixel data"):
        image.data.compute()


def test_zarr_group_without_metadata(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_array("raw", shape=(4, 4), dtype="u1")
    with pytest.raises(InputError, match=r"without OME-Zarr multiscales metadata.*raw"):
        read_image(tmp_path / "g.zarr")


@pytest.mark.parametrize(
    ("shape", "axes", "message"),
    [
        ((5,), None, "cannot tell the axes of this 1-D image"),
        ((3, 4, 20, 20), None, "cannot tell the axes of this 4-D image"),
        ((3, 4, 20, 20), "tzyx", "has 3 time points"),
        ((20, 20), "zy", "lack y or x"),
    ],
)
def test_wrong_dimensionality(tmp_path, shape, axes, message):
    path = str(tmp_path / "a.zarr")
    zarr.create_array(path, shape=shape, dtype="u2", chunks=shape)
    with pytest.raises(InputError, match=message):
        read_image(path, axes=axes)


def test_labels_with_channels_or_bool_are_refused(tmp_path):
    write_tiff(tmp_path / "l.tif", np.zeros((2, 10, 10), np.uint16), axes="cyx")
    with pytest.raises(InputError, match="labels must have one channel, this file has 2"):
        read_labels(tmp_path / "l.tif")
    zarr.create_array(str(tmp_path / "b.zarr"), shape=(8, 8), dtype=bool)
    with pytest.raises(InputError, match="binary mask, not instance labels"):
        read_labels(tmp_path / "b.zarr")


# --- atomic outputs -----------------------------------------------------------


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.ome.zarr"
    with pytest.raises(RuntimeError, match="boom"), atomic_output(dest) as tmp:
        os.makedirs(tmp)
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_output_replaces_only_when_complete(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(dest) as tmp:
        tmp.write_text("new, half")
        raise KeyboardInterrupt
    assert dest.read_text() == "old"
    with atomic_output(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_failed_ome_zarr_write_leaves_no_store(tmp_path):
    def explode(block):
        raise ValueError("disk on fire")

    data = da.zeros((1, 64, 64), chunks=(1, 32, 32), dtype=np.float32).map_blocks(explode, dtype=np.float32)
    with pytest.raises(ValueError, match="disk on fire"):
        write_ome_zarr(tmp_path / "x.ome.zarr", data, axes="cyx", spacing=(1, 1))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("nz", [1, 2, 3, 5])
def test_pyramid_of_a_short_stack_never_halves_z_below_one_plane(tmp_path, nz):
    data = np.ones((1, nz, 256, 256), np.float32)
    path = write_ome_zarr(tmp_path / "s.ome.zarr", data, axes="czyx", spacing=(1, 1, 1),
                          levels=3)
    root = zarr.open_group(str(path), mode="r")
    shapes = [root[d["path"]].shape for d in ngff_metadata(root.attrs)["multiscales"][0]["datasets"]]
    assert len(shapes) == 4
    assert all(s[1] >= 1 for s in shapes)
    assert [s[2] for s in shapes] == [256, 128, 64, 32]


def test_default_chunks_are_capped():
    assert default_chunks((100, 5000)) == (100, 1024)
    assert default_chunks((10, 300, 200)) == (10, 256, 200)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_metadata_is_json(tmp_path, version):
    path = write_ome_zarr(tmp_path / "m.ome.zarr", np.zeros((1, 16, 16), np.float32), axes="cyx",
                          spacing=(1, 1), attrs={"source": "x.tif"}, version=version)
    if version == "0.5":
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        ome = attrs["ome"]
    else:
        attrs = ome = json.loads((path / ".zattrs").read_text())
    assert attrs["unetpipe"] == {"source": "x.tif"}
    assert ome["multiscales"][0]["axes"][1] == {"name": "y", "type": "space"}
