"""The napari dock widget for reviewing and correcting segmentation results.

A thin layer over :mod:`unetpipe.review.store`: it shows a sample's image and labels,
its measurement table and a queue of flagged objects, turns button presses
into the pure edit functions, and runs reading and saving in worker threads.
Painting and erasing are napari's own Labels tools on the editable layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QSortFilterProxyModel, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..core.layout import list_samples
from ..io.images import image_pyramid
from ..review import curate, edits
from ..review import queue as rq
from ..review import store as rv

SORT_ROLE = Qt.ItemDataRole.UserRole


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class FrameModel(QAbstractTableModel):
    """A pandas DataFrame as a read-only Qt table; numbers sort as numbers."""

    def __init__(self, frame=None, parent=None):
        super().__init__(parent)
        import pandas as pd

        self.frame = frame if frame is not None else pd.DataFrame()

    def set_frame(self, frame) -> None:
        self.beginResetModel()
        self.frame = frame.reset_index(drop=True)
        self.endResetModel()

    def rowCount(self, parent=None):  # Qt's name
        return 0 if parent is not None and parent.isValid() else len(self.frame)

    def columnCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else len(self.frame.columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        value = self.frame.iat[index.row(), index.column()]
        if role == SORT_ROLE:
            if isinstance(value, (bool, np.bool_)):
                return int(value)
            if isinstance(value, (int, float, np.integer, np.floating)):
                return float(value)
            return str(value)
        if role == Qt.ItemDataRole.DisplayRole:
            if isinstance(value, (float, np.floating)):
                return f"{value:.4g}"
            return str(value)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return str(self.frame.columns[section])
        return str(section + 1)


class ReviewWidget(QWidget):
    """Review, correct and save the labels of one sample of a results folder.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    results : path, optional
        The results folder (default ``results`` in the working folder).
    max_whole_bytes : int
        Label images up to this size are loaded and edited whole; larger ones
        by regions around the object under review, snapped to the store's
        chunks (:data:`unetpipe.review.store.WHOLE_MAX_BYTES`).
    margin : int
        Pixels of context around an object in region mode.
    """

    def __init__(self, napari_viewer, *, results: str | os.PathLike | None = None,
                 max_whole_bytes: int = rv.WHOLE_MAX_BYTES, margin: int = rv.DEFAULT_MARGIN):
        super().__init__()
        self.viewer = napari_viewer
        self.max_whole_bytes = int(max_whole_bytes)
        self.margin = int(margin)
        self.store: rv.LabelStore | None = None
        self.table = None
        self.queue = None
        self.queue_pos = -1
        self.box: tuple[slice, ...] | None = None
        self.loaded: np.ndarray | None = None
        self.actions: list[dict] = []
        self.decisions: dict[int, str] = {}
        self.labels_layer = self.image_layer = self.seeds_layer = None
        self.current: int | None = None
        self._jobs = 0
        self._workers = []
        self._max_id = 0
        self._mode = None  # the labels layer's tool while it is locked
        self.last_save: rv.SaveResult | None = None
        self.last_export: Path | None = None

        self.results_edit = QLineEdit(os.fspath(results) if results else "results")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.sample_box = QComboBox()
        self.open_btn = QPushButton("Open")
        self.open_btn.clicked.connect(lambda: self.open_sample())
        self.results_edit.editingFinished.connect(self.refresh_samples)
        self.status = QLabel("Choose a results folder and a sample.")
        self.status.setWordWrap(True)
        self.queue_label = QLabel("Queue: –")
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.accept_btn = QPushButton("Accept")
        self.reject_btn = QPushButton("Reject")
        self.prev_btn.clicked.connect(lambda: self.previous())
        self.next_btn.clicked.connect(lambda: self.next())
        self.accept_btn.clicked.connect(lambda: self.decide("accept"))
        self.reject_btn.clicked.connect(lambda: self.decide("reject"))
        self.model = FrameModel()
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.doubleClicked.connect(self._row_activated)
        self.delete_btn = QPushButton("Delete")
        self.merge_btn = QPushButton("Merge selected")
        self.split_btn = QPushButton("Split by seeds")
        self.save_btn = QPushButton("Save")
        self.export_btn = QPushButton("Export as training data")
        self.delete_btn.clicked.connect(lambda: self.delete())
        self.merge_btn.clicked.connect(lambda: self.merge())
        self.split_btn.clicked.connect(lambda: self.split())
        self.save_btn.clicked.connect(lambda: self.save())
        self.export_btn.clicked.connect(lambda: self.export())
        for b, tip in ((self.delete_btn, "Delete the selected objects"),
                       (self.merge_btn, "Join the objects selected in the table"),
                       (self.split_btn, "Split the object under the points of the "
                                        "'split seeds' layer, one piece per point"),
                       (self.save_btn, "Write the changed chunks back; the previous "
                                       "version is kept"),
                       (self.export_btn, "Write image.tif + labels.tif to the curated "
                                         "training data (data.curated)")):
            b.setToolTip(tip)

        top = QGridLayout()
        top.addWidget(QLabel("Results"), 0, 0)
        top.addWidget(self.results_edit, 0, 1)
        top.addWidget(browse, 0, 2)
        top.addWidget(QLabel("Sample"), 1, 0)
        top.addWidget(self.sample_box, 1, 1)
        top.addWidget(self.open_btn, 1, 2)
        nav = QHBoxLayout()
        for w in (self.prev_btn, self.next_btn, self.accept_btn, self.reject_btn):
            nav.addWidget(w)
        edit = QHBoxLayout()
        for w in (self.delete_btn, self.merge_btn, self.split_btn):
            edit.addWidget(w)
        out = QHBoxLayout()
        out.addWidget(self.save_btn)
        out.addWidget(self.export_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.queue_label)
        layout.addLayout(nav)
        layout.addWidget(self.view, 1)
        layout.addWidget(QLabel("Edit (paint / erase with the labels layer's tools):"))
        layout.addLayout(edit)
        layout.addLayout(out)
        layout.addWidget(self.status)
        self.refresh_samples()

    # --- plumbing ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a worker thread is still reading or writing."""
        return self._jobs > 0

    @property
    def region_mode(self) -> bool:
        return self.store is not None and not self.store.fits_whole(self.max_whole_bytes)

    @property
    def results(self) -> Path:
        return Path(self.results_edit.text().strip() or "results")

    def _message(self, text: str) -> None:
        self.status.setText(text)
        from napari.utils.notifications import show_info

        show_info(f"unetpipe review: {text}")

    def _error(self, text: str) -> None:
        self.status.setText(f"⚠ {text}")
        from napari.utils.notifications import show_error

        show_error(f"unetpipe review: {text}")

    def _refuse_if_busy(self, what: str) -> bool:
        """Whether a worker runs (then say so): one read or save of the store at a time."""
        if self.busy:
            self._error(f"busy reading or saving; {what} when it has finished")
            return True
        return False

    def _lock_edits(self, locked: bool) -> None:
        """Make the labels layer read-only while a worker reads or saves it: a stroke
        painted meanwhile would be overwritten by the loaded region or miss the save."""
        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers:
            return
        if locked:
            if layer.editable:
                self._mode = layer.mode
                layer.editable = False
        elif not layer.editable:
            layer.editable = True
            if self._mode is not None:
                try:
                    layer.mode = self._mode
                except (ValueError, TypeError):
                    pass
            self._mode = None

    def _run(self, func, done, *args) -> None:
        """Run ``func(*args)`` in a worker thread, then ``done(result)`` in the GUI thread.

        The labels layer is read-only until the worker has finished.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(func, *args, _start_thread=False)
        worker.returned.connect(done)
        worker.errored.connect(lambda e: self._error(str(e) or type(e).__name__))

        def finished():
            self._jobs -= 1
            if worker in self._workers:
                self._workers.remove(worker)
            if not self._jobs:
                self._lock_edits(False)

        worker.finished.connect(finished)
        self._jobs += 1
        self._workers.append(worker)
        self._lock_edits(True)
        worker.start()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Results folder", str(self.results))
        if folder:
            self.results_edit.setText(folder)
            self.refresh_samples()

    def refresh_samples(self) -> list[str]:
        """Fill the sample list from the results folder."""
        self.sample_box.clear()
        try:
            names = list_samples(self.results)
        except Exception as e:
            self.status.setText(f"⚠ {e}")
            return []
        self.sample_box.addItems(names)
        self.status.setText(f"{len(names)} sample(s) in {self.results}")
        return names

    # --- opening a sample ---------------------------------------------------------

    def open_sample(self, sample: str | None = None) -> None:
        """Open ``sample`` (default: the one chosen in the list)."""
        if self._refuse_if_busy("open a sample"):
            return
        sample = sample or self.sample_box.currentText()
        if not sample:
            self._error(f"no sample chosen; {self.results} holds no segmentation results")
            return
        if self.sample_box.findText(sample) < 0:
            self.sample_box.addItem(sample)
        self.sample_box.setCurrentText(sample)
        self._run(self._load_sample, self._show_sample, self.results, sample)

    def _load_sample(self, results: Path, sample: str):
        store = rv.LabelStore.open(results, sample)
        table = rv.read_table(store.paths)
        if table is None:
            raise rv.InputError(os.fspath(store.paths.table), "measurement table not found")
        # every level of the image's pyramid, lazily: napari reads only what it shows
        image = image_pyramid(store.paths.image) if store.paths.image.exists() \
            else None
        whole = store.fits_whole(self.max_whole_bytes)
        labels = store.read() if whole else None
        return store, table, image, labels, rv.decisions(rv.read_review(store.paths)), \
            store.max_id()

    def _show_sample(self, loaded) -> None:
        store, table, image, labels, decisions, max_id = loaded
        self.store, self.decisions, self._max_id = store, decisions, max_id
        self.actions, self.current, self.queue_pos = [], None, -1
        for layer in (self.image_layer, self.labels_layer, self.seeds_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        spacing = store.spacing
        if image is not None:
            data, multiscale, channel_axis = image
            kwargs = {} if channel_axis is None else {"channel_axis": channel_axis}
            self.image_layer = self.viewer.add_image(data, name=f"{store.paths.sample} image",
                                                     scale=spacing, contrast_limits=(0, 1),
                                                     multiscale=multiscale, **kwargs)
            if isinstance(self.image_layer, list):
                self.image_layer = self.image_layer[0]
        if labels is None:  # region mode: an empty first region
            self.box = tuple(slice(0, min(c, n)) for c, n in zip(store.storage_chunks,
                                                                 store.shape, strict=True))
            labels = store.read(self.box)
        else:
            self.box = tuple(slice(0, n) for n in store.shape)
        self.loaded = labels.copy()
        self.labels_layer = self.viewer.add_labels(
            labels, name=f"{store.paths.sample} labels", scale=spacing,
            translate=self._translate(self.box))
        self.seeds_layer = self.viewer.add_points(
            np.zeros((0, store.ndim)), name="split seeds", scale=spacing, size=3,
            face_color="yellow", ndim=store.ndim)
        self.viewer.layers.selection.active = self.labels_layer
        self._set_table(table)
        mode = ("region mode: objects are loaded with their surroundings"
                if self.region_mode else "whole image loaded")
        recovered = f"; an interrupted save was {store.recovered}" if store.recovered else ""
        if store.set_aside is not None:
            recovered += (f"; the review record of an earlier segmentation was moved to "
                          f"{store.set_aside.name}")
        self._message(f"{store.paths.sample}: {len(table)} objects, {len(self.queue)} flagged; "
                      f"{mode}{recovered}")

    def _translate(self, box) -> tuple[float, ...]:
        return tuple(s.start * d for s, d in zip(box, self.store.spacing, strict=True))

    def _set_table(self, table) -> None:
        self.table = table
        self.queue = rq.review_queue(table)
        reasons = dict(zip(self.queue["label"], self.queue["reasons"], strict=True))
        shown = table.copy()
        shown.insert(1, "status", [self.decisions.get(int(i), "") for i in table["label"]])
        shown.insert(2, "flags", [reasons.get(int(i), "") for i in table["label"]])
        self.model.set_frame(shown)
        self._update_queue_label()

    def _update_queue_label(self) -> None:
        if self.queue is None or not len(self.queue):
            self.queue_label.setText("Queue: no flagged objects")
            return
        if self.queue_pos < 0:
            self.queue_label.setText(f"Queue: {len(self.queue)} flagged objects; press Next")
            return
        row = self.queue.iloc[self.queue_pos]
        label = int(row["label"])
        status = self.decisions.get(label)
        self.queue_label.setText(f"Queue {self.queue_pos + 1}/{len(self.queue)}: object {label}"
                                 f" ({row['reasons']})" + (f" — {status}ed" if status else ""))

    # --- navigation -----------------------------------------------------------------

    def next(self) -> None:
        """Go to the next flagged object."""
        self._step(+1)

    def previous(self) -> None:
        """Go to the previous flagged object."""
        self._step(-1)

    def _step(self, step: int) -> None:
        if self._refuse_if_busy("go to another object"):
            return
        if self.queue is None or not len(self.queue):
            self._error("no flagged objects to review")
            return
        self.queue_pos = (self.queue_pos + step) % len(self.queue) if self.queue_pos >= 0 \
            else (0 if step > 0 else len(self.queue) - 1)
        self._update_queue_label()
        self.go_to(int(self.queue.iloc[self.queue_pos]["label"]))

    def _row_activated(self, index) -> None:
        row = self.proxy.mapToSource(index).row()
        self.go_to(int(self.model.frame.iloc[row]["label"]))

    def _row_of(self, label: int):
        rows = self.table[self.table["label"] == label]
        if rows.empty:
            raise KeyError(label)
        return rows.iloc[0]

    def go_to(self, label: int) -> None:
        """Centre the view on object ``label`` and select it (loading its region if needed)."""
        if self.store is None:
            self._error("open a sample first")
            return
        if self._refuse_if_busy("go to another object"):
            return
        try:
            row = self._row_of(label)
        except KeyError:
            self._error(f"object {label} is not in the table (save to update it)")
            return
        obj = rq.object_box(row, spacing=self.store.spacing)
        if self.region_mode and not rq.contains(self.box, obj):
            box = self.store.region_for([obj], margin=self.margin)
            self._load_region(box, then=lambda: self._centre(label, row))
        else:
            self._centre(label, row)

    def _load_region(self, box, then=None) -> None:
        data = self._edited()
        pending = bool(self.actions) or (data is not None and not np.array_equal(data,
                                                                                self.loaded))
        if data is not None:
            data = data.copy()  # the worker saves a snapshot, not the layer's live array

        old_box, actions = self.box, list(self.actions)

        def work():
            saved = None
            if pending:  # leaving a region saves its edits (each save is a version)
                saved = rv.save_region(self.store, data, old_box, actions=actions)
            return saved, box, self.store.read(box), rv.read_table(self.store.paths)

        def done(result):
            saved, new_box, region, table = result
            if saved is not None:
                self._after_save(saved, table)
            self.box, self.loaded = new_box, region.copy()
            self.labels_layer.data = region
            self.labels_layer.translate = self._translate(new_box)
            if then is not None:
                then()

        self._run(work, done)

    def _centre(self, label: int, row) -> None:
        centre = rq.object_centre(row, ndim=self.store.ndim)
        if self.store.ndim == 3:
            self.viewer.dims.set_point(0, centre[0])
        camera_of(self.viewer).center = centre
        self.current = label
        self.labels_layer.selected_label = label
        self._select_row(label)

    def _select_row(self, label: int) -> None:
        rows = np.flatnonzero(self.model.frame["label"].to_numpy() == label)
        if rows.size:
            index = self.proxy.mapFromSource(self.model.index(int(rows[0]), 0))
            self.view.selectRow(index.row())
            self.view.scrollTo(index)

    def selected_ids(self) -> list[int]:
        """Objects selected in the table, else the one under review / selected in napari."""
        rows = {self.proxy.mapToSource(i).row() for i in self.view.selectionModel().selectedRows()}
        ids = sorted(int(self.model.frame.iloc[r]["label"]) for r in rows)
        if not ids and self.labels_layer is not None and self.labels_layer.selected_label:
            ids = [int(self.labels_layer.selected_label)]
        return ids

    # --- decisions and edits ---------------------------------------------------------

    def decide(self, decision: str, ids=None) -> None:
        """Record ``"accept"`` or ``"reject"`` for the selected objects."""
        ids = list(ids) if ids is not None else self.selected_ids()
        if self.store is None or not ids:
            self._error("select an object first")
            return
        if self._refuse_if_busy(f"{decision}"):
            return
        try:
            rv.record_decisions(self.store.paths, ids, decision)
        except Exception as e:  # e.g. another process is saving the store
            self._error(f"{decision} not recorded: {e}")
            return
        for i in ids:
            self.decisions[int(i)] = decision
        self._set_table(self.table)
        self._select_row(ids[0])
        self._message(f"{decision}ed object(s) {', '.join(map(str, ids))}")

    def _edited(self):
        return None if self.labels_layer is None else np.asarray(self.labels_layer.data)

    def _outside(self, ids) -> list[int]:
        """Objects that reach beyond the loaded region (a partial edit would split them)."""
        if not self.region_mode:
            return []
        out = []
        for i in ids:
            with_row = self.table[self.table["label"] == i]
            if not with_row.empty and not rq.contains(
                    self.box, rq.object_box(with_row.iloc[0], spacing=self.store.spacing)):
                out.append(int(i))
        return out

    def _apply(self, action: str, ids, new) -> None:
        self.labels_layer.data = new
        self.actions.append({"action": action, "ids": [int(i) for i in ids]})
        self._message(f"{action}: object(s) {', '.join(map(str, ids))} (not saved yet)")

    def _check_ids(self, ids, least: int) -> bool:
        if self.store is None:
            self._error("open a sample first")
            return False
        if self._refuse_if_busy("edit"):
            return False
        if len(ids) < least:
            self._error("select at least two objects in the table" if least > 1
                        else "select an object first")
            return False
        outside = self._outside(ids)
        if outside:
            self._error(f"object(s) {outside} reach beyond the loaded region; go to one of "
                        "them (Next / double-click) so that its region is loaded")
            return False
        return True

    def delete(self, ids=None) -> None:
        """Delete the selected objects."""
        ids = list(ids) if ids is not None else self.selected_ids()
        if self._check_ids(ids, 1):
            self._apply("delete", ids, edits.delete_objects(self._edited(), ids))

    def merge(self, ids=None) -> None:
        """Merge the objects selected in the table."""
        ids = list(ids) if ids is not None else self.selected_ids()
        if self._check_ids(ids, 2):
            self._apply("merge", ids, edits.merge_objects(self._edited(), ids))

    def split(self) -> None:
        """Split the object under the seed points, one piece per point."""
        if self.store is None:
            self._error("open a sample first")
            return
        if self._refuse_if_busy("split"):
            return
        pts = np.asarray(self.seeds_layer.data, dtype=float)
        if len(pts) < 2:
            self._error("add at least two points to the 'split seeds' layer, inside the "
                        "object to split")
            return
        origin = np.array([s.start for s in self.box])
        seeds = np.rint(pts).astype(int) - origin
        data = self._edited()
        inside = np.all((seeds >= 0) & (seeds < data.shape), axis=1)
        if not inside.all():
            self._error("seed points outside the loaded region")
            return
        label = int(data[tuple(seeds[0])])
        if label == 0 or not self._check_ids([label], 1):
            if label == 0:
                self._error("the first seed lies on background")
            return
        self._max_id = max(self._max_id, int(data.max()))
        new_ids = list(range(self._max_id + 1, self._max_id + 1 + len(seeds)))
        try:
            new = edits.split_object(data, seeds, new_ids=new_ids, label=label,
                                  spacing=self.store.spacing)
        except ValueError as e:
            self._error(str(e))
            return
        self._max_id = new_ids[-1]
        self.seeds_layer.data = np.zeros((0, self.store.ndim))
        self._apply("split", [label, *new_ids], new)
        self.viewer.layers.selection.active = self.labels_layer

    # --- saving and export ------------------------------------------------------------

    def dirty(self) -> bool:
        """Whether the labels layer holds unsaved edits."""
        data = self._edited()
        return data is not None and (bool(self.actions) or not np.array_equal(data, self.loaded))

    def save(self, then=None) -> None:
        """Write the edits back (only changed chunks; previous version kept)."""
        if self.store is None:
            self._error("open a sample first")
            return
        if self._refuse_if_busy("save"):
            return
        data, box, actions = self._edited().copy(), self.box, list(self.actions)

        def work():
            return rv.save_region(self.store, data, box, actions=actions), \
                rv.read_table(self.store.paths)

        def done(result):
            saved, table = result
            self.loaded = data
            self._after_save(saved, table)
            if then is not None:
                then()

        self._run(work, done)

    def _after_save(self, saved: rv.SaveResult, table) -> None:
        self.actions = []
        # ids given by the save (renamed painted objects) are taken from now on
        self._max_id = max([self._max_id, *saved.ids, *saved.renamed.values()])
        if saved.renamed and self.labels_layer is not None:
            # painted ids that were taken elsewhere got new ones: show them
            self.loaded = self.store.read(self.box)
            self.labels_layer.data = self.loaded.copy()
        self.last_save = saved
        if table is not None:
            self._set_table(table)
        if saved.version is None:
            self._message("nothing to save: the labels are unchanged")
        else:
            note = "" if saved.table == "updated" else f"; the table is {saved.table}"
            self._message(f"saved {len(saved.ids)} object(s) in {len(saved.chunks)} chunk "
                          f"file(s); previous version {saved.version}{note}")

    def export(self) -> None:
        """Save if needed, then write the corrected image and labels as training data."""
        if self.store is None:
            self._error("open a sample first")
            return
        if self._refuse_if_busy("export"):
            return
        box = self.box if self.region_mode else None

        def work():
            return curate.export_training(self.store, box=box)

        def done(folder):
            self.last_export = folder
            self._message(f"exported to {folder}: the next training run uses it as sample "
                          f"curated-{folder.name}")

        if self.dirty():
            self.save(then=lambda: self._run(work, done))
        else:
            self._run(work, done)
