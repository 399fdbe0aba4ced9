"""The napari review widget, in a real viewer on a headless display."""

import json
import threading

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtCore import QItemSelectionModel, Qt
from review_data import chunk_files, labels_2d, labels_3d, make_results

from unetpipe.io.images import read_labels
from unetpipe.plugin.review_widget import ReviewWidget, camera_of
from unetpipe.review import edits
from unetpipe.review import queue as rq
from unetpipe.review import store as rv

pytestmark = pytest.mark.napari


def opened(make_napari_viewer, qtbot, results, **kwargs):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, results=results, **kwargs)
    viewer.window.add_dock_widget(widget)
    widget.open_sample("cells")
    wait(qtbot, widget)
    assert widget.store is not None, widget.status.text()
    return viewer, widget


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=20000)


def select(widget, ids):
    sm = widget.view.selectionModel()
    sm.clearSelection()
    flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
    for i in ids:
        row = int(np.flatnonzero(widget.model.frame["label"].to_numpy() == i)[0])
        sm.select(widget.proxy.mapFromSource(widget.model.index(row, 0)), flags)


def column_values(widget, name):
    col = list(widget.model.frame.columns).index(name)
    return [widget.proxy.index(r, col).data(Qt.ItemDataRole.UserRole)
            for r in range(widget.proxy.rowCount())]


def test_table_sorting_queue_and_navigation_2d(make_napari_viewer, qtbot, tmp_path):
    paths = make_results(tmp_path, labels_2d(), spacing=[0.5, 0.5])
    viewer, widget = opened(make_napari_viewer, qtbot, paths.results)
    assert [widget.sample_box.itemText(i) for i in range(widget.sample_box.count())] == ["cells"]
    assert widget.proxy.rowCount() == 4 and not widget.region_mode
    names = [layer.name for layer in viewer.layers]
    assert names == ["cells image", "cells labels", "split seeds"]
    assert_array_equal(widget.labels_layer.data, labels_2d())
    assert widget.labels_layer.editable
    # sortable by any column, numerically
    widget.view.sortByColumn(list(widget.model.frame.columns).index("area"),
                             Qt.SortOrder.DescendingOrder)
    assert column_values(widget, "label")[0] == 4.0
    widget.view.sortByColumn(0, Qt.SortOrder.DescendingOrder)
    assert column_values(widget, "label") == [4.0, 3.0, 2.0, 1.0]
    # the queue: only the dumbbell (4) crosses a chunk seam (x = 24)
    table = pd.read_csv(paths.table)
    assert widget.queue["label"].tolist() == rq.review_queue(table)["label"].tolist() == [4]
    assert widget.queue["reasons"].tolist() == ["seam"]
    widget.next_btn.click()
    row = table.set_index("label").loc[4]
    assert_allclose(camera_of(viewer).center[-2:], (row.centroid_y, row.centroid_x))
    assert widget.labels_layer.selected_label == 4 and widget.selected_ids() == [4]
    assert widget.queue_label.text().startswith("Queue 1/1: object 4 (seam)")
    widget.go_to(1)
    row = table.set_index("label").loc[1]
    assert_allclose(camera_of(viewer).center[-2:], (row.centroid_y, row.centroid_x))
    widget.prev_btn.click()  # back to the queue, wrapping round
    assert widget.labels_layer.selected_label == 4
    # accept / reject are recorded at once
    widget.accept_btn.click()
    select(widget, [1])
    widget.reject_btn.click()
    entries = json.loads(paths.review.read_text())["entries"]
    assert [(e["action"], e["ids"]) for e in entries] == [
        ("accept", [4]), ("reject", [1])]
    assert "reject" in column_values(widget, "status")


def test_navigation_in_3d_sets_the_plane(make_napari_viewer, qtbot, tmp_path):
    paths = make_results(tmp_path, labels_3d(), spacing=[2.0, 0.5, 0.5])
    viewer, widget = opened(make_napari_viewer, qtbot, paths.results)
    table = pd.read_csv(paths.table).set_index("label")
    for label in (1, 4):
        widget.go_to(label)
        wait(qtbot, widget)
        row = table.loc[label]
        assert_allclose(camera_of(viewer).center[-2:], (row.centroid_y, row.centroid_x))
        assert abs(viewer.dims.point[0] - row.centroid_z) <= 1.0  # nearest plane (z step 2)
        assert widget.labels_layer.selected_label == label


def test_edit_buttons_save_and_export(make_napari_viewer, qtbot, tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    before = chunk_files(paths.labels)
    _, widget = opened(make_napari_viewer, qtbot, paths.results)
    select(widget, [2, 3])
    widget.merge_btn.click()
    expected = edits.merge_objects(lab, [2, 3])
    assert_array_equal(widget.labels_layer.data, expected)
    select(widget, [1])
    widget.delete_btn.click()
    expected = edits.delete_objects(expected, [1])
    assert_array_equal(widget.labels_layer.data, expected)
    widget.seeds_layer.data = np.array([[19.0, 19.0], [19.0, 26.0]])
    widget.split_btn.click()
    data = np.asarray(widget.labels_layer.data)
    assert_array_equal(data[lab != 4], expected[lab != 4])
    assert (data[17:22, 17:22] == 5).all() and (data[17:22, 24:29] == 6).all()
    assert len(widget.seeds_layer.data) == 0
    expected = data.copy()
    # a napari paint stroke on the editable layer
    widget.labels_layer.data[0, 30:32] = 9
    expected[0, 30:32] = 9
    widget.save_btn.click()
    wait(qtbot, widget)
    assert_array_equal(read_labels(paths.labels).data.compute(), expected)
    after = chunk_files(paths.labels)
    changed = {k for k in before | after if after.get(k) != before.get(k)}
    assert changed == {"0/c/0/0", "0/c/1/1", "0/c/2/2", "0/c/2/3", "0/c/0/3"}
    assert sorted(widget.last_save.chunks) == sorted(changed)
    entries = json.loads(paths.review.read_text())["entries"]
    assert [(e["action"], e["ids"]) for e in entries] == [
        ("merge", [2, 3]), ("delete", [1]), ("split", [4, 5, 6]), ("paint", [9])]
    assert widget.model.frame["label"].tolist() == [2, 5, 6, 9]  # the table follows
    assert not widget.dirty()
    widget.export_btn.click()
    wait(qtbot, widget)
    folder = tmp_path / "resources/curated/cells"
    assert widget.last_export == folder
    assert_array_equal(read_labels(folder / "labels.tif").data.compute(), expected)


def test_region_mode_edits_and_saves_only_touched_chunks(make_napari_viewer, qtbot, tmp_path):
    lab = labels_3d()
    paths = make_results(tmp_path, lab, spacing=[2.0, 0.5, 0.5])
    before = chunk_files(paths.labels)
    viewer, widget = opened(make_napari_viewer, qtbot, paths.results, max_whole_bytes=1,
                            margin=2)
    assert widget.region_mode
    widget.go_to(4)
    wait(qtbot, widget)
    # object 4 (z 2-6, y 40-46, x 30-45) with a margin of 2, snapped to 4 x 32 x 32 chunks
    assert widget.box == (slice(0, 8), slice(32, 64), slice(0, 64))
    assert widget.labels_layer.data.shape == (8, 32, 64)
    assert_allclose(widget.labels_layer.translate, (0.0, 16.0, 0.0))
    assert_array_equal(widget.labels_layer.data, lab[:, 32:64])
    table = pd.read_csv(paths.table).set_index("label")
    assert_allclose(camera_of(viewer).center[-2:], (table.loc[4].centroid_y, table.loc[4].centroid_x))
    # object 2 lies outside the region: refused with a message, nothing changes
    widget.delete(ids=[2])
    assert "beyond the loaded region" in widget.status.text()
    widget.seeds_layer.data = np.array([[4.0, 43.0, 33.0], [4.0, 43.0, 42.0]])
    widget.split_btn.click()
    assert set(np.unique(widget.labels_layer.data)) == {0, 5, 6}
    widget.save_btn.click()
    wait(qtbot, widget)
    split = edits.split_object(lab, [[4, 43, 33], [4, 43, 42]], new_ids=[5, 6],
                            spacing=(2.0, 0.5, 0.5))
    assert_array_equal(read_labels(paths.labels).data.compute(), split)
    after = chunk_files(paths.labels)
    changed = {k for k in before | after if after.get(k) != before.get(k)}
    assert changed == {"0/c/0/1/0", "0/c/1/1/0", "0/c/0/1/1", "0/c/1/1/1"}
    # moving to an object outside the region loads its region
    widget.go_to(2)
    wait(qtbot, widget)
    assert widget.box == (slice(0, 8), slice(0, 32), slice(0, 32))
    assert_array_equal(widget.labels_layer.data, split[:, :32, :32])


def test_a_folder_without_results_says_so(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, results=tmp_path)
    assert "no segmentation results" in widget.status.text()
    widget.open_sample()
    assert "no sample chosen" in widget.status.text()
    widget.next_btn.click()
    assert widget.store is None


def test_while_saving_the_widget_refuses_edits_navigation_and_decisions(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    _, widget = opened(make_napari_viewer, qtbot, paths.results)
    go_on = threading.Event()
    real = rv.save_region

    def slow_save(*args, **kwargs):
        assert go_on.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(rv, "save_region", slow_save)
    select(widget, [1])
    widget.delete_btn.click()
    widget.save_btn.click()
    assert widget.busy
    assert not widget.labels_layer.editable  # no strokes that the save would miss
    for press in (widget.accept_btn.click, widget.save_btn.click, widget.next_btn.click,
                  lambda: widget.go_to(4), lambda: widget.delete(ids=[2]),
                  lambda: widget.merge(ids=[2, 3]), widget.export_btn.click):
        widget.status.setText("")
        press()
        assert "busy" in widget.status.text()
    assert not paths.review.exists() and widget.actions == [{"action": "delete", "ids": [1]}]
    assert_array_equal(widget.labels_layer.data, edits.delete_objects(lab, [1]))
    go_on.set()
    wait(qtbot, widget)
    assert widget.labels_layer.editable
    assert_array_equal(read_labels(paths.labels).data.compute(), edits.delete_objects(lab, [1]))
    select(widget, [2])
    widget.accept_btn.click()
    assert [(e["action"], e["ids"]) for e in rv.read_review(paths)["entries"]] == [
        ("delete", [1]), ("accept", [2])]


def test_after_a_save_renames_ids_new_ids_stay_unique(make_napari_viewer, qtbot, tmp_path):
    lab = labels_2d()
    paths = make_results(tmp_path, lab)
    _, widget = opened(make_napari_viewer, qtbot, paths.results, max_whole_bytes=1, margin=1)
    widget.go_to(4)
    wait(qtbot, widget)
    assert widget.box == (slice(16, 24), slice(16, 32))
    widget.labels_layer.data[0, 0:2] = 1  # id 1 lies outside the region
    widget.go_to(1)  # leaving the region saves it: the stroke becomes object 5
    wait(qtbot, widget)
    assert widget.last_save.renamed == {1: 5} and widget.box == (slice(0, 8), slice(0, 8))
    widget.seeds_layer.data = np.array([[2.0, 2.0], [5.0, 5.0]])
    widget.split_btn.click()  # the pieces get 6 and 7, not the 5 just given out
    assert widget.actions == [{"action": "split", "ids": [1, 6, 7]}]
    assert set(np.unique(widget.labels_layer.data)) == {0, 6, 7}
    widget.save_btn.click()
    wait(qtbot, widget)
    assert widget.last_save.renamed == {}
    saved = read_labels(paths.labels).data.compute()
    assert (saved == 5).sum() == 2 and set(np.unique(saved)) == {0, 2, 3, 4, 5, 6, 7}


class _Computed:
    """Bytes of every array Dask computes (a global scheduler callback)."""

    def __enter__(self):
        from dask.callbacks import Callback

        self.sizes = []

        def posttask(key, result, dsk, state, worker_id):
            if hasattr(result, "nbytes"):
                self.sizes.append(int(result.nbytes))

        self._cb = Callback(posttask=posttask)
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)


def big_results(root):
    """A sample of 8192 x 8192 pixels in 1024 x 1024 chunks, almost nothing on disk:
    the image has a pyramid of three levels, the labels one object."""
    import zarr

    from unetpipe.io.images import set_multiscale_metadata

    results, n, c = root / "results", 8192, 1024
    pre = zarr.open_group(str(results / "preprocessed/cells.ome.zarr"), mode="w",
                          zarr_format=3)
    for level in range(3):
        pre.create_array(str(level), shape=(1, n >> level, n >> level), chunks=(1, c, c),
                         dtype="float32", fill_value=0, dimension_names=list("cyx"))
    set_multiscale_metadata(pre, axes="cyx", unit=None, name="cells",
                            scales=[[1.0, 2.0**k, 2.0**k] for k in range(3)])
    pre.attrs["unetpipe"] = {"percentiles": [1.0, 99.8]}
    labels = zarr.open_group(str(results / "labels/cells.ome.zarr"), mode="w", zarr_format=3)
    array = labels.create_array("0", shape=(n, n), chunks=(c, c), dtype="uint32",
                                fill_value=0, dimension_names=list("yx"))
    array[100:120, 100:120] = 1
    set_multiscale_metadata(labels, axes="yx", unit=None, scales=[[1.0, 1.0]], name="labels")
    labels.attrs["unetpipe"] = {"stage": "segment", "objects": 1}
    (results / "tables").mkdir()
    pd.DataFrame({"label": [1], "area": [400.0], "centroid_y": [109.5], "centroid_x": [109.5],
                  "bbox_min_y": [100.0], "bbox_min_x": [100.0], "bbox_max_y": [120.0],
                  "bbox_max_x": [120.0]}).to_csv(results / "tables/cells.csv", index=False)
    return results


def test_region_mode_shows_the_image_pyramid_without_reading_whole_planes(
        make_napari_viewer, qtbot, tmp_path):
    results = big_results(tmp_path)
    plane = 8192 * 8192 * 4
    with _Computed() as computed:
        _, widget = opened(make_napari_viewer, qtbot, results, max_whole_bytes=1)
        widget.go_to(1)
        wait(qtbot, widget)
        widget.image_layer.refresh()
        qtbot.wait(200)
    assert widget.region_mode and widget.labels_layer.data.shape == (1024, 1024)
    layer = widget.image_layer
    assert layer.multiscale and [lv.shape for lv in layer.data] == [
        (8192, 8192), (4096, 4096), (2048, 2048)]
    assert computed.sizes and max(computed.sizes) <= plane // 16, max(computed.sizes)
    assert sum(computed.sizes) < plane // 4
