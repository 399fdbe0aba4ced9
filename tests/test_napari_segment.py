"""The napari sample data and segment widget: the widget runs the package's own
stages (preprocess, predict, segment) on a layer, adds the results with the
layer's scale, reports progress per block, can be cancelled, and turns the
user's errors into a one-line notification."""

import threading

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from segment_data import assert_same_up_to_relabelling, write_probabilities

from unetpipe.core import progress
from unetpipe.core.cluster import Execution
from unetpipe.core.config import validate_config
from unetpipe.core.errors import UnetpipeError
from unetpipe.inputs.synth import synthetic_nuclei, touching_pairs
from unetpipe.io.images import ngff_metadata, read_image, write_ome_zarr
from unetpipe.nn.checkpoint import FORMAT, VERSION, build_model, save_checkpoint
from unetpipe.nn.model import UNet
from unetpipe.nn.models import load_checkpoint
from unetpipe.nn.tiles import predict_array
from unetpipe.stages.instances import SegmentParams, segment_array
from unetpipe.stages.metrics import score
from unetpipe.stages.preprocess import percentile_normalize
from unetpipe.stages.segment import segment_store
from unetpipe.stages.targets import write_targets
from unetpipe.stages.train import train_model

pytestmark = [pytest.mark.napari, pytest.mark.usefixtures("torch_one_thread")]

napari = pytest.importorskip("napari")
from unetpipe.plugin.sample_data import OPTIONS, touching_cells  # noqa: E402
from unetpipe.plugin.segment_widget import (  # noqa: E402
    Cancelled,
    SegmentWidget,
    segment_layer_data,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A two-class U-Net trained briefly (50 iterations, ~10 s) on crowded nuclei."""
    folder = tmp_path_factory.mktemp("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train, val = [], []
    for k, role in enumerate(["train", "train", "val"]):
        image, labels = synthetic_nuclei((128, 128), seed=100 + k, **OPTIONS)
        lo, hi = np.percentile(image, [1, 99.8])
        store = write_ome_zarr(folder / f"{k}.ome.zarr",
                               percentile_normalize(image[None], [lo], [hi]), axes="cyx",
                               spacing=(1, 1), chunks=(64, 64), labels={"gt": labels})
        if role == "train":
            write_targets(store, folder / f"{k}.zarr", mode="two_class", progress=False)
            train.append((str(store), str(folder / f"{k}.zarr")))
        else:
            val.append(str(store))
    config = validate_config({
        "model": {"depth": 2, "features": 8},
        "train": {"iterations": 50, "patch": [64, 64], "batch_size": 4, "val_every": 50,
                  "minutes": None, "checkpoint_every": 50, "warmup": 0, "lr": 0.01},
        "augment": {"elastic": False}})
    train_model(train, val, folder / "model", config=config, progress=False)
    torch.set_num_threads(threads)
    return str(folder / "model" / "checkpoint_best.pt")


@pytest.fixture(scope="module")
def checkpoint_3d(tmp_path_factory):
    """An untrained 3D U-Net's checkpoint (for the error path)."""
    model = UNet(ndim=3, depth=1, features=2)
    path = tmp_path_factory.mktemp("ckpt3d") / "3d.pt"
    save_checkpoint({"format": FORMAT, "version": VERSION, "iteration": 0,
                     "model": {"class": "UNet", "config": model.config,
                               "state_dict": model.state_dict()},
                     "targets": {"mode": "two_class"}}, path)
    return str(path)


def expected(image, checkpoint, params, block, folder):
    """The pipeline run by hand: normalise as preprocessing does (the image is
    one chunk, so its percentiles are exact), predict in memory, then segment
    in memory and, with the same blocks, as a store.

    Returns the probabilities, the store's labels and the in-memory labels.
    """
    model = build_model(load_checkpoint(checkpoint))
    lo, hi = np.percentile(image.astype(np.float64), [1.0, 99.8])
    probs = predict_array(model, percentile_normalize(image[None], [lo], [hi]), block=block)
    write_probabilities(folder / "p.ome.zarr", probs, chunks=block)
    segment_store(folder / "p.ome.zarr", folder / "l.ome.zarr", params=params, block=block,
                  execution=Execution(progress=False))
    stored = read_image(folder / "l.ome.zarr").data.compute()
    return probs, stored, segment_array(probs, params=params)


def test_touching_cells_sample_is_crowded_and_labelled():
    (image, imeta, ikind), (labels, lmeta, lkind) = touching_cells()
    assert (ikind, lkind) == ("image", "labels")
    assert (imeta["name"], lmeta["name"]) == ("touching cells", "touching cells ground truth")
    assert image.shape == labels.shape == (256, 256)
    assert image.dtype == np.uint16 and np.issubdtype(labels.dtype, np.integer)
    n = int(labels.max())
    assert n >= 100 and np.unique(labels).size == n + 1
    assert len(touching_pairs(labels)) >= 80  # most nuclei press against another
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
    again = touching_cells()
    assert_array_equal(again[0][0], image)  # the same every time


def test_the_pipeline_equals_predict_and_segment_run_by_hand(checkpoint, tmp_path):
    (image, _, _), (truth, _, _) = touching_cells()
    params = SegmentParams(method="watershed", threshold=0.5, min_size=10.0)
    events = []
    out = segment_layer_data(image, checkpoint=checkpoint, folder=tmp_path, params=params,
                             block=(128, 128), name="cells", report=lambda *e: events.append(e))
    probs, labels, whole = expected(image, checkpoint, params, (128, 128), tmp_path / "x")
    assert out.classes == ["background", "cell"]
    assert out.probabilities.shape == (2, 256, 256) and out.labels.shape == (256, 256)
    assert_allclose(np.asarray(out.probabilities), probs, atol=1e-5)
    assert_array_equal(np.asarray(out.labels), labels)  # the same ids, too
    assert_same_up_to_relabelling(whole, np.asarray(out.labels))
    assert out.objects == labels.max()
    # each stage reported its blocks (2 x 2), ending at all of them
    last = {stage: (n, total) for stage, n, total in events}
    assert last == {"predict": (4, 4), "segment": (4, 4), "relabel": (4, 4)}
    # briefly trained, the model still finds most of the crowded nuclei
    scores = score(truth, np.asarray(out.labels))
    assert scores.tp[0] >= 0.6 * scores.n_true, scores


def test_errors_name_the_layer_and_the_problem(checkpoint, checkpoint_3d, tmp_path):
    image = touching_cells()[0][0]
    with pytest.raises(ValueError, match=r"layer 'cells' is 2D \(shape \(256, 256\)\), but "
                                         r"the checkpoint's model segments 3D stacks"):
        segment_layer_data(image, checkpoint=checkpoint_3d, folder=tmp_path, name="cells")
    with pytest.raises(ValueError, match="is 3D"):
        segment_layer_data(np.zeros((3, 64, 64)), checkpoint=checkpoint, folder=tmp_path)
    nan = image.astype(np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(UnetpipeError, match="layer 'cells': the image contains NaN"):
        segment_layer_data(nan, checkpoint=checkpoint, folder=tmp_path / "n", name="cells")
    with pytest.raises(Cancelled):
        segment_layer_data(image, checkpoint=checkpoint, folder=tmp_path / "c",
                           block=(64, 64), cancelled=lambda: True)


def test_a_3d_stack_with_an_anisotropic_calibrated_layer_scale(checkpoint_3d, tmp_path):
    import zarr

    from unetpipe.plugin.segment_widget import _layer_spacing

    layer = napari.layers.Image(np.zeros((6, 20, 24), np.uint16), scale=(2000.0, 500.0, 500.0),
                                units=("nanometer",) * 3)
    spacing, unit = _layer_spacing(layer, 3)
    assert_allclose(spacing, (2.0, 0.5, 0.5)) and unit == "micrometer"
    assert _layer_spacing(napari.layers.Image(np.zeros((4, 4)), scale=(3, 2)), 2) == (
        (3.0, 2.0), None)
    stack = np.random.default_rng(0).integers(0, 1000, (18, 20, 24)).astype(np.uint16)
    out = segment_layer_data(stack, checkpoint=checkpoint_3d, folder=tmp_path, block=16,
                             spacing=spacing, unit=unit,
                             params=SegmentParams(method="components", min_size=0.0))
    assert out.probabilities.shape == (2, 18, 20, 24) and out.labels.shape == (18, 20, 24)
    assert out.folder == str(tmp_path)  # lazy, on the stores
    probs = zarr.open_group(str(tmp_path / "probabilities.ome.zarr"), mode="r")
    assert probs["0"].chunks == (2, 16, 16, 16)  # the int block: y, x and z (up to 64)
    scale = ngff_metadata(probs.attrs)["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale == [{"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]}]


def open_widget(viewer, checkpoint):
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.checkpoint.setText(checkpoint)
    return widget


def test_widget_segments_the_sample_image_with_its_scale(make_napari_viewer, qtbot,
                                                         checkpoint, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("unetpipe", "touching_cells")
    image_layer = viewer.layers["touching cells"]
    image_layer.scale = (0.5, 0.25)
    image_layer.translate = (10.0, -4.0)
    widget = open_widget(viewer, checkpoint)
    assert [widget.image.itemText(i) for i in range(widget.image.count())] == [
        "touching cells"]
    widget.image.setCurrentText("touching cells")
    widget.block.setValue(128)
    widget.threshold.setValue(0.5)
    widget.min_size.setValue(10.0)
    seen = []
    widget._relay.progressed.connect(lambda *e: seen.append(e))
    with qtbot.waitSignal(widget.finished, timeout=90_000) as blocker:
        widget.run_button.click()
        assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    assert blocker.args == [True], widget.status.text()
    assert widget.progress.maximum() == 4 and widget.progress.value() == 4
    assert seen[-1] == ("relabel", 4, 4) and ("predict", 4, 4) in seen
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()

    names = [layer.name for layer in viewer.layers]
    assert names == ["touching cells", "touching cells ground truth",
                     "touching cells P(background)", "touching cells P(cell)",
                     "touching cells labels"]
    labels = viewer.layers["touching cells labels"]
    cell = viewer.layers["touching cells P(cell)"]
    assert type(labels).__name__ == "Labels" and type(cell).__name__ == "Image"
    for layer in (labels, cell, viewer.layers["touching cells P(background)"]):
        assert layer.data.shape == (256, 256)
        assert tuple(layer.scale) == (0.5, 0.25) and tuple(layer.translate) == (10.0, -4.0)
    assert cell.blending == "additive" and not viewer.layers["touching cells P(background)"
                                                             ].visible
    params = SegmentParams(threshold=0.5, min_size=10.0)
    probs, expected_labels, _ = expected(image_layer.data, checkpoint, params, (128, 128),
                                         tmp_path / "low")
    assert_allclose(np.asarray(cell.data), probs[1], atol=1e-5)
    assert_array_equal(np.asarray(labels.data), expected_labels)
    assert widget.status.text() == f"{expected_labels.max()} objects"

    # a second run replaces the results, and leaves the ground truth alone
    truth = np.asarray(viewer.layers["touching cells ground truth"].data).copy()
    widget.threshold.setValue(0.9)
    with qtbot.waitSignal(widget.finished, timeout=90_000):
        widget.run_button.click()
    assert len(viewer.layers) == 5
    assert_array_equal(viewer.layers["touching cells ground truth"].data, truth)
    _, high, _ = expected(image_layer.data, checkpoint,
                          SegmentParams(threshold=0.9, min_size=10.0), (128, 128),
                          tmp_path / "high")
    assert_array_equal(np.asarray(viewer.layers["touching cells labels"].data), high)


def test_widget_layer_choice_follows_the_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    # from the manifest, as the Plugins menu opens it
    _, widget = viewer.window.add_plugin_dock_widget("unetpipe", "Segment with a checkpoint")
    assert isinstance(widget, SegmentWidget)
    assert widget.image.count() == 0
    first = viewer.add_image(np.zeros((40, 40), np.uint16), name="one")
    viewer.add_labels(np.zeros((40, 40), np.uint8), name="not an image")
    viewer.add_image(np.zeros((40, 40), np.uint16), name="two")
    items = lambda: [widget.image.itemText(i) for i in range(widget.image.count())]  # noqa: E731
    assert items() == ["one", "two"]
    widget.image.setCurrentText("two")
    first.name = "renamed"
    assert items() == ["renamed", "two"] and widget.image.currentText() == "two"
    viewer.layers.remove("two")
    assert items() == ["renamed"]


def test_widget_errors_are_one_line_notifications(make_napari_viewer, qtbot, checkpoint,
                                                  checkpoint_3d):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer = make_napari_viewer()
    viewer.add_image(touching_cells()[0][0], name="cells")
    widget = open_widget(viewer, checkpoint_3d)
    notification_manager.records.clear()
    with qtbot.waitSignal(widget.finished, timeout=60_000) as blocker:
        widget.run_button.click()
    assert blocker.args == [False]
    message = ("layer 'cells' is 2D (shape (256, 256)), but the checkpoint's model segments "
               "3D stacks (z, y, x) with 1 channel(s)")
    assert widget.status.text() == message
    errors = [r for r in notification_manager.records
              if r.severity == NotificationSeverity.ERROR]
    assert [r.message for r in errors] == [message]
    assert not hasattr(errors[0], "exception")  # a message, not a traceback
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert widget.run_button.isEnabled()

    # no checkpoint: said at once, nothing started
    widget.checkpoint.setText("")
    widget.run_button.click()
    assert widget.status.text() == "choose a checkpoint file" and widget._worker is None
    widget.checkpoint.setText(str(checkpoint) + ".missing")
    with qtbot.waitSignal(widget.finished, timeout=60_000):
        widget.run_button.click()
    assert widget.status.text().endswith(".missing: no such model file")


def test_widget_cancel_stops_the_run_without_layers(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(touching_cells()[0][0], name="cells")
    widget = open_widget(viewer, checkpoint)
    widget.block.setValue(32)  # 64 blocks: time to cancel
    widget._relay.progressed.connect(lambda *e: widget.cancel())
    with qtbot.waitSignal(widget.finished, timeout=60_000) as blocker:
        widget.run_button.click()
    assert blocker.args == [False]
    assert widget.status.text() == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    # the stages stopped at a progress update, outside tqdm's process-wide
    # lock: a later bar (any stage, any test after this one) still gets it
    t = threading.Thread(target=lambda: progress.bar(total=1).close(), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()


def test_widget_takes_the_settings_tuned_for_the_checkpoint(make_napari_viewer, checkpoint,
                                                            tmp_path):
    tuned = {"params": {"method": "components", "threshold": 0.45, "foreground": 0.3,
                        "grow": 3, "seeds": "classes", "h": 1.5, "min_size": 7.0,
                        "max_size": None, "fill_holes": None},
             "score": 0.8, "defaults_score": 0.7, "objective": "mean_ap",
             "validation": ["val_000"]}
    path = tmp_path / "checkpoint_tuned.pt"
    save_checkpoint({**load_checkpoint(checkpoint), "segment_params": tuned}, path)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("unetpipe", "Segment with a checkpoint")
    widget.checkpoint.setText("")
    assert widget.params() == SegmentParams()  # nothing tuned: the built-in defaults
    widget.checkpoint.setText(str(path))  # typed or browsed: the form follows
    assert widget.params() == SegmentParams(**tuned["params"])
    assert "tuned for this model (mean_ap 0.800 on val_000)" in widget.status.text()
    # a checkpoint without tuned settings puts the built-in defaults back
    widget.checkpoint.setText(checkpoint)
    assert widget.params() == SegmentParams() and widget.status.text() == ""
    # settings typed into the form stay when the checkpoint holds none
    widget.threshold.setValue(0.3)
    widget.checkpoint.setText(checkpoint + " ")
    assert widget.params() == SegmentParams(threshold=0.3)


def test_widget_offers_the_workflows_model_and_the_starter(make_napari_viewer, qtbot, checkpoint,
                                                            tmp_path, monkeypatch):
    """The models on offer: the workflow's trained model (when the viewer runs in
    the project folder) and the starter, which segments with its tuned settings."""
    from unetpipe.nn.models import resolve_model

    monkeypatch.chdir(tmp_path)  # no results/model here
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert [widget.checkpoint.itemText(i) for i in range(widget.checkpoint.count())] == [
        "starter"]
    assert widget.checkpoint.text() == "starter"
    tuned = load_checkpoint("starter")["segment_params"]
    assert widget.params() == SegmentParams(**tuned["params"])
    assert widget.status.text().startswith("Settings tuned for this model")

    image, truth = synthetic_nuclei((160, 160), seed=[5, 1])
    viewer.add_image(image, name="nuclei")
    widget.image.setCurrentText("nuclei")
    widget.block.setValue(128)
    with qtbot.waitSignal(widget.finished, timeout=90_000) as blocker:
        widget.run_button.click()
    assert blocker.args == [True], widget.status.text()
    labels = np.asarray(viewer.layers["nuclei labels"].data)
    direct = segment_layer_data(image, checkpoint=resolve_model("starter"),
                                folder=tmp_path / "direct",
                                params=SegmentParams(**tuned["params"]), block=128)
    assert_array_equal(labels, np.asarray(direct.labels))
    assert score(truth, labels).ap(0.5) > 0.8

    # in a project folder, the workflow's (tuned) model comes first
    model = tmp_path / "results" / "model"
    model.mkdir(parents=True)
    (model / "checkpoint_best.pt").write_bytes(open(checkpoint, "rb").read())
    other = SegmentWidget(viewer)
    assert [other.checkpoint.itemText(i) for i in range(other.checkpoint.count())] == [
        str((model / "checkpoint_best.pt").resolve()), "starter"]
    assert other.checkpoint.text() == str((model / "checkpoint_best.pt").resolve())
