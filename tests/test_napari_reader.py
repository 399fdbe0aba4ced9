"""The napari reader: results folders, sample stores and single stores open as
lazy layers with their physical scale; anything else is left to other readers;
the manifest's commands import."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal
from segment_data import probabilities_from_labels, write_probabilities

from unetpipe.core.cluster import Execution
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io import ngff
from unetpipe.io.images import (
    ngff_metadata,
    read_image,
    set_multiscale_metadata,
    write_ome_zarr,
    write_tiff,
)
from unetpipe.stages.instances import SegmentParams
from unetpipe.stages.preprocess import preprocess_file
from unetpipe.stages.segment import segment_store
from unetpipe.stages.targets import write_targets

pytestmark = pytest.mark.napari

napari = pytest.importorskip("napari")
from unetpipe.io.images import store_kind  # noqa: E402
from unetpipe.plugin.reader import napari_get_reader  # noqa: E402


def make_results(root: Path, *, shape, spacing, chunks, seed, samples=("a",), version=None,
                 origin=None):
    """A results folder as the workflow writes it, for small synthetic images (in
    NGFF ``version``; the raw images placed at ``origin``, in micrometres)."""
    for k, name in enumerate(samples):
        image, labels = synthetic_nuclei(shape, spacing=spacing, seed=seed + k)
        axes = "zyx"[-len(shape):]
        if origin is None:
            raw = root / "raw" / f"{name}.tif"
            write_tiff(raw, image, axes=axes, spacing=spacing)
        else:  # an OME-Zarr input: the format that carries a position
            raw = root / "raw" / f"{name}.ome.zarr"
            write_ome_zarr(raw, image, axes=axes, spacing=spacing, unit="micrometer",
                           origin=origin)
        write_tiff(root / "raw" / f"{name}_labels.tif", labels.astype(np.uint16), axes=axes,
                   spacing=spacing)
        pre = root / "results" / "preprocessed" / f"{name}.ome.zarr"
        preprocess_file(raw, pre, labels_path=root / "raw" / f"{name}_labels.tif",
                        chunks=chunks, pyramid_levels=2, progress=False, ngff_version=version)
        write_targets(pre, root / "results" / "targets" / f"{name}.zarr", mode="three_class",
                      sigma=2.0, progress=False)
        probs = root / "results" / "probabilities" / f"{name}.ome.zarr"
        write_probabilities(probs, probabilities_from_labels(labels, seed=k),
                            spacing=list(spacing), chunks=chunks, version=version or "0.4",
                            origin=origin,
                            attrs={"source": str(pre),
                                   "classes": ["background", "interior", "boundary"]})
        segment_store(probs, root / "results" / "labels" / f"{name}.ome.zarr",
                      params=SegmentParams(min_size=0.0), execution=Execution(progress=False),
                      ngff_version=version)
    return root / "results"


@pytest.fixture(scope="module")
def results_2d(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("r2"), shape=(96, 96), spacing=(0.5, 0.5),
                        chunks=(32, 32), seed=1, samples=("a", "b"))


@pytest.fixture(scope="module")
def results_3d(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("r3"), shape=(12, 64, 64),
                        spacing=(2.0, 0.5, 0.5), chunks=(6, 32, 32), seed=5)


def read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    return {meta["name"] if isinstance(meta["name"], str) else tuple(meta["name"]):
            (data, meta, kind) for data, meta, kind in reader(str(path))}


def levels(data):
    return data if isinstance(data, list) else [data]


SAMPLE_2D = ["a image", "a ground truth",
             ("a P(background)", "a P(interior)", "a P(boundary)"),
             "a targets", "a weights", "a labels"]


def test_results_folder_gives_every_sample_s_layers_lazily_with_the_spacing(results_2d):
    layers = read(results_2d)
    assert list(layers) == SAMPLE_2D + [n.replace("a ", "b ") if isinstance(n, str) else
                                        tuple(x.replace("a ", "b ") for x in n)
                                        for n in SAMPLE_2D]
    kinds = {name: kind for name, (_, _, kind) in layers.items()}
    assert kinds["a image"] == kinds["a weights"] == "image"
    assert kinds[SAMPLE_2D[2]] == "image"
    assert kinds["a ground truth"] == kinds["a targets"] == kinds["a labels"] == "labels"

    pre = results_2d / "preprocessed" / "a.ome.zarr"
    n_levels = len(ngff_metadata(zarr.open_group(str(pre), mode="r").attrs)["multiscales"][0]
                   ["datasets"])
    assert n_levels == 2  # 96 -> 48; 24 would be below the 32-pixel minimum
    image, meta, _ = layers["a image"]
    assert meta["multiscale"] is True and len(image) == n_levels
    assert [lv.shape for lv in image] == [(96, 96), (48, 48)]  # the channel axis squeezed
    assert all(isinstance(lv, da.Array) and lv.dtype == np.float32 for lv in image)
    assert_array_equal(image[0].compute(), read_image(pre).data[0].compute())
    assert meta["contrast_limits"] == [0.0, 1.0]  # napari need not scan the data

    for name, (data, meta, _kind) in layers.items():
        for lv in levels(data):
            assert isinstance(lv, da.Array), name
        scale = meta["scale"][0] if isinstance(name, tuple) else meta["scale"]
        translate = meta["translate"][0] if isinstance(name, tuple) else meta["translate"]
        assert tuple(scale) == (0.5, 0.5), name
        assert tuple(translate) == (0.0, 0.0), name
        units = meta["units"][0] if isinstance(name, tuple) else meta["units"]
        assert tuple(units) == ("micrometer", "micrometer"), name

    gt, meta, _ = layers["a ground truth"]
    assert meta["multiscale"] and len(gt) == 2 and gt[0].dtype == np.uint16
    labels = read_image(results_2d / "labels" / "a.ome.zarr").data
    data, meta, _ = layers["a labels"]
    assert data.dtype == np.uint32 and meta["multiscale"] is False
    assert_array_equal(data.compute(), labels.compute())
    assert data.compute().max() > 5

    probs, meta, _ = layers[SAMPLE_2D[2]]
    assert meta["channel_axis"] == 0 and probs.shape == (3, 96, 96)
    assert meta["blending"] == "additive"
    assert meta["colormap"] == ["gray", "green", "magenta"]
    assert meta["visible"] == [False, True, True]  # background hidden
    targets = zarr.open_group(str(results_2d / "targets" / "a.zarr"), mode="r")
    assert_array_equal(layers["a targets"][0].compute(), targets["targets"][...])
    assert_array_equal(layers["a weights"][0].compute(), targets["weights"][...])
    assert layers["a targets"][0].dtype == np.uint8

    # the samples lie on top of each other: only the first is shown
    assert layers["a image"][1]["visible"] and not layers["b image"][1]["visible"]
    assert layers["a labels"][1]["visible"] and not layers["b labels"][1]["visible"]


def test_3d_results_in_the_viewer_overlay_with_the_anisotropic_scale(results_3d,
                                                                     make_napari_viewer):
    viewer = make_napari_viewer()
    added = viewer.open(str(results_3d), plugin="unetpipe")
    names = [layer.name for layer in viewer.layers]
    assert names == ["a image", "a ground truth", "a P(background)", "a P(interior)",
                     "a P(boundary)", "a targets", "a weights", "a labels"]
    assert len(added) == len(names)
    types = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert [n for n, t in types.items() if t == "Labels"] == ["a ground truth", "a targets",
                                                              "a labels"]
    assert viewer.dims.ndim == 3  # the class axis is no spatial dimension
    image = viewer.layers["a image"]
    assert image.multiscale and len(image.data) == 2
    assert image.data[0].shape == (12, 64, 64)
    assert image.data[1].shape == (12, 32, 32)  # z (2 um) is coarser than y, x: kept
    for layer in viewer.layers:
        assert tuple(layer.scale) == (2.0, 0.5, 0.5), layer.name
        assert tuple(layer.translate) == (0.0, 0.0, 0.0), layer.name
        assert [str(u) for u in layer.units] == ["micrometer"] * 3, layer.name
        assert layer.data.shape[-3:] if not layer.multiscale else True
        np.testing.assert_allclose(layer.extent.world, image.extent.world)
        assert tuple(layer.axis_labels) == ("z", "y", "x")
    assert viewer.layers["a P(interior)"].data.shape == (12, 64, 64)
    assert viewer.layers["a P(interior)"].blending == "additive"
    assert viewer.layers["a P(boundary)"].colormap.name == "magenta"
    assert not viewer.layers["a P(background)"].visible
    assert not viewer.layers["a weights"].visible
    labels = read_image(results_3d / "labels" / "a.ome.zarr").data.compute()
    assert_array_equal(np.asarray(viewer.layers["a labels"].data), labels)
    # a world point maps to the same voxel of the image and of the labels
    assert_array_equal(viewer.layers["a labels"].world_to_data((10.0, 8.0, 4.0)),
                       image.world_to_data((10.0, 8.0, 4.0)))


@pytest.mark.parametrize("stage, store", [("labels", "a.ome.zarr"),
                                          ("probabilities", "a.ome.zarr"),
                                          ("targets", "a.zarr"),
                                          ("preprocessed", "a.ome.zarr")])
def test_a_sample_store_brings_its_other_stages(results_2d, stage, store):
    layers = read(results_2d / stage / store)
    assert list(layers) == SAMPLE_2D  # sample a only, every stage
    shown = {n for n, (_, meta, _) in layers.items()
             if isinstance(n, str) and meta.get("visible", True)}
    assert {"a image", "a labels"} <= shown
    if stage == "targets":
        assert "a targets" in shown


def test_a_stage_folder_gives_that_stage_of_every_sample(results_2d):
    assert list(read(results_2d / "labels")) == ["a labels", "b labels"]


def test_stores_outside_a_results_folder_are_known_by_their_attributes(results_2d, tmp_path):
    lone = tmp_path / "elsewhere"
    shutil.copytree(results_2d / "labels" / "a.ome.zarr", lone / "mine.ome.zarr")
    shutil.copytree(results_2d / "targets" / "a.zarr", lone / "t.zarr")
    shutil.copytree(results_2d / "preprocessed" / "a.ome.zarr", lone / "img.ome.zarr")
    assert store_kind(lone / "mine.ome.zarr") == "labels"
    assert list(read(lone / "mine.ome.zarr")) == ["mine labels"]
    assert list(read(lone / "t.zarr")) == ["t targets", "t weights"]
    assert store_kind(lone / "t.zarr") == "targets"
    assert list(read(lone / "img.ome.zarr")) == ["img image", "img ground truth"]
    _, meta, _ = read(lone / "t.zarr")["t targets"]
    assert tuple(meta["scale"]) == (0.5, 0.5)  # from the targets' own attributes
    # probabilities as predict writes them name their classes
    probs = lone / "p.ome.zarr"
    shutil.copytree(results_2d / "probabilities" / "a.ome.zarr", probs)
    group = zarr.open_group(str(probs), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k != "unetpipe"})
    assert napari_get_reader(str(probs)) is None  # no unetpipe attributes
    group.attrs["unetpipe"] = {"stage": "predict", "classes": ["background", "cell", "edge"]}
    assert list(read(probs)) == [("p P(background)", "p P(cell)", "p P(edge)")]
    assert read(probs)[("p P(background)", "p P(cell)", "p P(edge)")][1]["colormap"] == [
        "gray", "green", "cyan"]


def test_other_paths_are_left_to_other_readers(results_2d, tmp_path):
    write_tiff(tmp_path / "x.tif", np.zeros((8, 8), np.uint16), axes="yx")
    write_ome_zarr(tmp_path / "plain.ome.zarr", np.zeros((1, 40, 40), np.float32), axes="cyx",
                   spacing=(1, 1))
    (tmp_path / "empty").mkdir()
    # a folder named like a stage, holding someone else's store
    other = tmp_path / "project"
    write_ome_zarr(other / "labels" / "cells.ome.zarr", np.zeros((40, 40), np.uint8),
                   axes="yx", spacing=(1, 1))
    for path in [tmp_path / "x.tif", tmp_path / "plain.ome.zarr", tmp_path / "empty",
                 tmp_path / "missing.zarr", other, other / "labels",
                 other / "labels" / "cells.ome.zarr",
                 results_2d / "preprocessed" / "a.ome.zarr" / "labels" / "gt",
                 results_2d.parent / "raw" / "a.tif"]:
        assert napari_get_reader(str(path)) is None, path
    assert napari_get_reader([str(tmp_path / "x.tif"), str(results_2d)]) is None
    both = napari_get_reader([str(results_2d / "labels" / "a.ome.zarr"),
                              str(results_2d / "labels" / "b.ome.zarr")])
    assert len(both("ignored")) == 2 * 6


# --- NGFF 0.4 and 0.5: other readers, napari's reader choice, positions --------------

ORIGIN = (100.0, -20.0)  # micrometres


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def placed(request, tmp_path_factory):
    """A results folder in either NGFF version whose image lies at ORIGIN."""
    return make_results(tmp_path_factory.mktemp(f"placed{request.param}"), shape=(96, 96),
                        spacing=(0.5, 0.5), chunks=(32, 32), seed=3, version=request.param,
                        origin=ORIGIN), request.param


def test_every_store_validates_and_opens_with_ome_zarr_py(placed):
    results, version = placed
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    pre, probs, labels = (results / stage / "a.ome.zarr"
                          for stage in ("preprocessed", "probabilities", "labels"))
    kinds = {path: type(ngff.validate(path)) for path in (pre, probs, labels,
                                                          pre / "labels" / "gt")}
    assert [k.__name__ for k in kinds.values()] == ["Image", "Image", "ImageLabel",
                                                     "ImageLabel"]
    assert {k.__module__.split(".")[1] for k in kinds.values()} == {f"v0{version[-1]}"}
    meta = ngff_metadata(zarr.open_group(str(labels), mode="r").attrs)
    assert meta["image-label"]["source"] == {"image": "../../preprocessed/a.ome.zarr"}
    ms = meta["multiscales"][0]
    assert ms["type"] == "nearest" and ms["datasets"][0]["coordinateTransformations"][1] == {
        "type": "translation", "translation": list(ORIGIN)}
    # ome-zarr-py: the labels store opens as its image (found by "source") plus the labels
    nodes = list(Reader(parse_url(str(labels)))())
    specs = [{type(s) for s in node.specs} for node in nodes]
    assert any(Label in s for s in specs) and any(Label not in s and Multiscales in s
                                                 for s in specs)
    image = next(n for n, s in zip(nodes, specs, strict=True) if Label not in s)
    assert image.data[0].shape == zarr.open_array(str(pre / "0"), mode="r").shape
    # the probabilities' channels carry the class names
    (node,) = Reader(parse_url(str(probs)))()
    assert node.metadata["channel_names"] == ["background", "interior", "boundary"]


def test_napari_opens_our_outputs_with_no_plugin_named(placed, make_napari_viewer, tmp_path):
    """With napari-ome-zarr installed as well: napari's reader chooser for any
    folder until `unetpipe view` set the preferences; then results folders and
    stores open with unetpipe, at their position; TIFFs are never ours."""
    from napari.errors import MultipleReaderError
    from napari.plugins import _npe2
    from napari.settings import get_settings

    from unetpipe.plugin.reader import prefer_unetpipe

    results, _ = placed
    viewer = make_napari_viewer()
    labels = results / "labels" / "a.ome.zarr"
    assert {"unetpipe", "napari-ome-zarr"} <= set(_npe2.get_readers(str(labels)))
    tif = tmp_path / "plain.tif"
    write_tiff(tif, np.zeros((16, 16), np.uint16), axes="yx")
    (tmp_path / "notes.txt").write_text("hello")
    assert "unetpipe" not in _npe2.get_readers(str(tif))
    assert "unetpipe" not in _npe2.get_readers(str(tmp_path / "notes.txt"))
    # a plain TIFF opens with napari's own reader, preferences or not
    (layer,) = viewer.open(str(tif), plugin=None)
    assert "unetpipe" not in layer.metadata
    settings = get_settings()
    before = dict(settings.plugins.extension2reader)
    with pytest.raises(MultipleReaderError):
        viewer.open(str(results), plugin=None)
    try:
        added = prefer_unetpipe([results])
        assert added[str(results.resolve()) + os.sep] == "unetpipe"
        layers = viewer.open(str(results), plugin=None)
        assert [layer.name for layer in layers] == [
            "a image", "a ground truth", "a P(background)", "a P(interior)", "a P(boundary)",
            "a targets", "a weights", "a labels"]
        viewer.layers.clear()
        # a store of a results folder needs no preference of its own folder
        layers = viewer.open(str(labels), plugin=None)
        assert "a labels" in [layer.name for layer in layers]
        (tif_layer,) = viewer.open(str(tif), plugin=None)
        assert "unetpipe" not in tif_layer.metadata
    finally:
        settings.plugins.extension2reader = before
    # the labels lie at the image's position: pixel (0, 0) at ORIGIN
    for name in ("a labels", "a image"):
        layer = viewer.layers[name]
        assert tuple(layer.translate) == pytest.approx(ORIGIN)
        assert tuple(layer.data_to_world((0, 0))) == pytest.approx(ORIGIN)
        assert tuple(layer.data_to_world((10, 4))) == pytest.approx((105.0, -18.0))


def test_unetpipe_view_sets_napari_s_reader_preferences(placed, tmp_path):
    """`unetpipe view --no-viewer` writes the preferences into napari's settings file,
    keeping the user's own."""
    import yaml

    results, _ = placed
    settings = tmp_path / "napari" / "settings.yaml"
    settings.parent.mkdir()
    settings.write_text(yaml.safe_dump({"plugins": {"extension2reader": {"*.czi": "mine"}}}))
    env = {**os.environ, "NAPARI_CONFIG": str(settings)}
    unetpipe = Path(sys.executable).with_name("unetpipe")
    proc = subprocess.run([str(unetpipe), "view", "--no-viewer", str(results)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    prefs = yaml.safe_load(settings.read_text())["plugins"]["extension2reader"]
    assert prefs == {"*.czi": "mine", "*/preprocessed/*.ome.zarr/": "unetpipe",
                     "*/probabilities/*.ome.zarr/": "unetpipe", "*/targets/*.zarr/": "unetpipe",
                     "*/labels/*.ome.zarr/": "unetpipe", f"{results.resolve()}/": "unetpipe"}
    proc = subprocess.run([str(unetpipe), "view", "--no-viewer", str(tmp_path / "missing")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "missing: not found" in proc.stderr


def test_napari_ome_zarr_opens_our_stores(placed, make_napari_viewer):
    results, _ = placed
    viewer = make_napari_viewer()
    (labels,) = viewer.open(str(results / "labels" / "a.ome.zarr"), plugin="napari-ome-zarr")
    assert type(labels).__name__ == "Labels"
    # napari-ome-zarr 0.10 takes only the first transformation of a level (the
    # scale) and so places every 0.4/0.5 image at 0; the scale it does take
    assert tuple(labels.scale) == pytest.approx((0.5, 0.5))
    truth = np.asarray(zarr.open_array(str(results / "labels" / "a.ome.zarr" / "0"),
                                       mode="r"))
    assert_array_equal(np.asarray(labels.data[0] if labels.multiscale else labels.data), truth)
    layers = viewer.open(str(results / "probabilities" / "a.ome.zarr"),
                         plugin="napari-ome-zarr")
    assert [layer.name.split(": ")[-1] for layer in layers] == [
        "background", "interior", "boundary"]  # the channels' labels
    # the preprocessed image with its ground truth (an NGFF image-label of it)
    layers = viewer.open(str(results / "preprocessed" / "a.ome.zarr"), plugin="napari-ome-zarr")
    assert sorted(type(layer).__name__ for layer in layers) == ["Image", "Labels"]
    assert all(tuple(layer.scale) == pytest.approx((0.5, 0.5)) for layer in layers)


def test_a_big_labels_store_has_levels_and_zoomed_out_reads_a_coarse_one(
        tmp_path, make_napari_viewer, monkeypatch):
    """Segmentation writes a pyramid of picked ids; napari zoomed out on the labels
    reads chunks of a coarse level only, none of level 0."""
    from pytestqt.qtbot import QtBot
    from zarr.storage import LocalStore

    from unetpipe.plugin.review_widget import camera_of

    n, block = 2048, 256
    lab = np.zeros((n, n), np.uint32)
    yy, xx = np.mgrid[:n, :n]
    lab[(yy % 32 >= 4) & (xx % 32 >= 4)] = 1  # squares of 28 pixels on a 32 grid
    probs = tmp_path / "results" / "probabilities" / "big.ome.zarr"
    write_probabilities(probs, probabilities_from_labels(lab, mode="two_class", noise=0.0),
                        chunks=(block, block), version="0.4",
                        attrs={"classes": ["background", "cell"]})
    labels = tmp_path / "results" / "labels" / "big.ome.zarr"
    result = segment_store(probs, labels, block=(block, block),
                           params=SegmentParams(min_size=0.0),
                           execution=Execution(progress=False))
    assert result.objects == (n // 32) ** 2
    root = zarr.open_group(str(labels), mode="r")
    shapes = [root[d["path"]].shape
              for d in ngff_metadata(root.attrs)["multiscales"][0]["datasets"]]
    assert shapes == [(2048, 2048), (1024, 1024), (512, 512), (256, 256)]
    level0 = np.asarray(root["0"])
    assert_array_equal(np.asarray(root["3"]), level0[::8, ::8])  # ids picked, never averaged
    ngff.validate(labels)

    reads = []
    get = LocalStore.get

    async def counted(self, key, *args, **kwargs):
        path = Path(self.root) / key
        if labels in path.parents:  # the other stores (the probabilities) do not count
            reads.append(path.relative_to(labels).as_posix())
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counted)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(800, 600)
    viewer.open(str(labels), plugin="unetpipe")
    layer = viewer.layers["big labels"]
    assert layer.multiscale and len(layer.data) == 4
    qtbot = QtBot(viewer.window._qt_window)
    viewer.reset_view()  # the whole image in a canvas of a few hundred pixels
    qtbot.waitUntil(lambda: layer.data_level > 0, timeout=10000)
    qtbot.wait(200)
    fit = layer.data_level
    camera = camera_of(viewer)
    camera.zoom = camera.zoom / 8  # and further out: the coarsest level
    qtbot.waitUntil(lambda: layer.data_level == 3, timeout=10000)
    qtbot.wait(200)

    def chunks_read(level):
        return {k for k in reads if k.startswith(f"{level}/")
                and k.rsplit("/", 1)[-1] not in ngff.METADATA_FILES}

    # level 0 (64 chunks of 256 x 256) is never read; the coarse levels are
    assert not chunks_read(0), sorted(chunks_read(0))[:5]
    assert chunks_read(3) == {"3/0/0"}
    assert 0 < len(chunks_read(fit)) <= 4 ** (3 - fit), (fit, sorted(chunks_read(fit)))


class _Computes:
    """Counts Dask computations (a global scheduler callback)."""

    def __enter__(self):
        from dask.callbacks import Callback

        self.count = 0

        def start(dsk):
            self.count += 1

        self._cb = Callback(start=start)
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)


def big_store(path: Path) -> Path:
    """A preprocessed store of 32768 x 32768 float32 (4 GiB) at level 0, three
    more levels, and only two chunks on disk, one of them garbage."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, scales = 32768, []
    for level in range(4):
        size = n >> level
        arr = root.create_array(str(level), shape=(1, size, size), chunks=(1, 1024, 1024),
                                dtype="float32", fill_value=0, dimension_names=["c", "y", "x"])
        scales.append([1.0, 0.25 * 2**level, 0.25 * 2**level])
        if level == 0:
            arr[0, :1024, :1024] = np.ones((1024, 1024), np.float32)
    set_multiscale_metadata(root, axes="cyx", unit="micrometer", scales=scales, name="big")
    root.attrs["unetpipe"] = {"percentiles": [1.0, 99.8], "low": [0.0], "high": [1.0]}
    chunk = path / "0" / "c" / "0" / "20" / "20"
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(b"not a chunk")  # reading it would fail
    return path


def test_a_big_store_opens_in_seconds_without_reading_pixels(tmp_path, make_napari_viewer):
    store = big_store(tmp_path / "results" / "preprocessed" / "big.ome.zarr")
    on_disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    assert on_disk < 10 * 2**20
    with _Computes() as computes:
        t0 = time.perf_counter()
        layers = napari_get_reader(str(tmp_path / "results"))(str(tmp_path / "results"))
        seconds = time.perf_counter() - t0
    assert computes.count == 0
    assert seconds < 2.0, seconds
    (data, meta, kind), = layers
    assert meta["name"] == "big image" and kind == "image" and meta["multiscale"]
    assert [lv.shape for lv in data] == [(32768 >> k,) * 2 for k in range(4)]
    assert data[0].nbytes == 4 * 2**30
    assert tuple(meta["scale"]) == (0.25, 0.25)
    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    viewer.open(str(store), plugin="unetpipe")
    seconds = time.perf_counter() - t0
    assert seconds < 10.0, seconds
    layer = viewer.layers["big image"]
    assert layer.multiscale and len(layer.data) == 4
    assert tuple(layer.scale) == (0.25, 0.25)


# --- the manifest ------------------------------------------------------------------------

OURS = ("unetpipe.get_reader", "unetpipe.touching_cells", "unetpipe.segment")


def test_manifest_commands_of_the_reader_sample_and_segment_widget_import():
    from npe2 import PluginManifest
    from npe2.manifest.utils import import_python_name

    manifest = PluginManifest.from_distribution("unetpipe")
    commands = {c.id: c for c in manifest.contributions.commands}
    assert set(OURS) <= set(commands)
    for cid in OURS:
        assert callable(import_python_name(commands[cid].python_name)), cid
    assert [r.command for r in manifest.contributions.readers] == ["unetpipe.get_reader"]
    assert [s.key for s in manifest.contributions.sample_data] == ["touching_cells"]


def test_npe2_validate_checks_every_command_of_the_manifest():
    # ALL commands, the review widget's too: fails while any python_name does not import
    from npe2 import PluginManifest

    PluginManifest.from_distribution("unetpipe").validate_imports()
    npe2 = Path(sys.executable).with_name("npe2")
    cli = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    done = subprocess.run([*cli, "validate", "unetpipe", "--imports"], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_odd_metadata_and_arguments_are_left_to_other_readers(tmp_path):
    for name, text in [("list.zarr/zarr.json", "[1, 2]"), ("string.zarr/zarr.json", '"group"'),
                       ("attrs.zarr/zarr.json", '{"node_type": "group", "attributes": [1]}'),
                       ("v2.zarr/.zattrs", "[1]")]:
        path = tmp_path / name
        path.parent.mkdir()
        path.write_text(text)
        if name.startswith("v2"):
            (path.parent / ".zgroup").write_text('{"zarr_format": 2}')
        assert napari_get_reader(str(path.parent)) is None, name
        assert store_kind(path.parent) is None
    for odd in (5, None, 2.5, b"results"):
        assert napari_get_reader(odd) is None, odd
