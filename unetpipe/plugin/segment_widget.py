"""napari dock widget: segment an image layer with a trained checkpoint or the starter model.

The widget only collects settings and shows progress; the work is
:func:`segment_layer_data`, the pipeline's own stages run on temporary
stores in a napari ``thread_worker``:

1. the layer's pixels are percentile-normalised and written as a
   preprocessed OME-Zarr store by :func:`unetpipe.stages.preprocess.preprocess_image`
   (the percentiles the checkpoint was trained with);
2. :func:`unetpipe.stages.predict.predict_store` predicts it block by block;
3. :func:`unetpipe.stages.segment.segment_store` segments and stitches the blocks.

So an image of any size is processed in bounded memory, and the result is
what ``unetpipe predict`` and ``unetpipe segment`` would give for the same
pixels. The stages tell their progress to a listener
(:func:`unetpipe.core.progress.listening`) that feeds the Qt progress bar and
stops them at the next block when the user cancels.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import progress as _progress
from ..core.cluster import Execution
from ..core.errors import UnetpipeError
from ..stages.instances import METHODS, SEEDS, SegmentParams

# Results up to this size are loaded into memory and their stores removed at
# once; larger ones stay lazy on their stores until napari exits.
IN_MEMORY_BYTES = 256 * 2**20

_TEMP_ROOTS: list[str] = []


@atexit.register
def _remove_temporary_stores() -> None:
    for root in _TEMP_ROOTS:
        shutil.rmtree(root, ignore_errors=True)


# the user cancelled the run (raised by the stages' progress updates)
Cancelled = _progress.Cancelled


@dataclass
class SegmentOutput:
    """What :func:`segment_layer_data` produced."""

    probabilities: object  # array of shape (K, *S), float32
    labels: object  # array of shape S, uint32
    classes: list[str]
    objects: int
    folder: str | None  # the stores, when the arrays still read from them


# --- the work, without Qt ------------------------------------------------------------


def model_input(data, model_config: dict, *, name: str = "image"):
    """The layer's pixels as a channel-first Dask array for the checkpoint's model.

    Parameters
    ----------
    data : array-like
        The layer's data (level 0 of a multiscale layer).
    model_config : dict
        The U-Net's constructor arguments (``ndim``, ``in_channels``).
    name : str
        The layer's name, for messages.

    Returns
    -------
    dask.array.Array of shape (C, *S)

    Raises
    ------
    ValueError
        The layer's dimensionality or channel count does not fit the model.
    """
    import dask.array as da

    from ..io.images import default_chunks

    ndim, channels = int(model_config["ndim"]), int(model_config["in_channels"])
    shape = tuple(int(s) for s in data.shape)
    kind = "2D images (y, x)" if ndim == 2 else "3D stacks (z, y, x)"
    if len(shape) == ndim and channels == 1:
        data = data[None]
    elif not (len(shape) == ndim + 1 and shape[0] == channels):
        what = f"{len(shape)}D" if len(shape) in (2, 3) else f"{len(shape)}-dimensional"
        raise ValueError(f"layer {name!r} is {what} (shape {shape}), but the checkpoint's "
                         f"model segments {kind} with {channels} channel(s)")
    if isinstance(data, da.Array):
        return data
    return da.from_array(np.asarray(data), chunks=(channels, *default_chunks(shape[-ndim:])))


def normalisation(ckpt: dict) -> tuple[tuple[float, float], bool]:
    """The percentiles and clipping the checkpoint's training images were preprocessed with
    (:func:`unetpipe.stages.apply.model_normalisation`)."""
    from ..stages.apply import model_normalisation

    return model_normalisation(ckpt)


def offered_models(folder: str | os.PathLike = "results/model") -> list[str]:
    """What the widget offers as models: the workflow's trained model below
    ``folder`` (``checkpoint_tuned.pt``, else ``checkpoint_best.pt``), if any,
    then the built-in models by name (``starter``)."""
    from ..nn.models import BUILTIN_MODELS, builtin_model

    offered = []
    for name in ("checkpoint_tuned.pt", "checkpoint_best.pt"):
        path = Path(os.fspath(folder)) / name
        if path.is_file():
            offered.append(str(path.resolve()))
            break
    offered += [name for name in BUILTIN_MODELS if builtin_model(name).is_file()]
    return offered


class _ModelBox(QComboBox):
    """An editable list of models: pick one on offer, or type or browse a path.

    ``text()``, ``setText()`` and ``textChanged`` work as a line edit's.
    """

    def __init__(self, offered: Sequence[str]):
        super().__init__()
        self.setEditable(True)
        self.addItems(list(offered))
        self.lineEdit().setPlaceholderText("checkpoint_best.pt, a .zip, or starter")
        self.setToolTip("The model: the workflow's trained model, starter (trained on "
                        "synthetic nuclei of many kinds; see `unetpipe info starter`), or "
                        "any checkpoint (.pt) or bioimage.io package (.zip) of unetpipe")
        self.textChanged = self.editTextChanged

    def text(self) -> str:
        return self.currentText()

    def setText(self, text: str) -> None:
        self.setEditText(text)


def segment_layer_data(data, *, checkpoint: str | os.PathLike, folder: str | os.PathLike,
                       spacing: Sequence[float] | None = None, unit: str | None = None,
                       params: SegmentParams | None = None,
                       block: int | Sequence[int] | None = None, name: str = "image",
                       report: Callable[[str, int, int], None] | None = None,
                       cancelled: Callable[[], bool] = lambda: False) -> SegmentOutput:
    """Predict and segment raw pixels with a checkpoint, through the pipeline's stages.

    Parameters
    ----------
    data : array-like of shape S or (C, *S)
        Raw pixels (a napari layer's data); normalised here as preprocessing
        does, with the checkpoint's percentiles.
    checkpoint : path or str
        A checkpoint written by training, a bioimage.io package written by
        ``unetpipe export``, or ``"starter"``
        (:func:`unetpipe.nn.models.resolve_model`).
    folder : path
        Where the temporary stores go (``image.ome.zarr``,
        ``probabilities.ome.zarr``, ``labels.ome.zarr``).
    spacing : sequence of float, optional
        Pixel size per axis of ``data`` (the last ones are the spatial
        axes), in micrometres when ``unit`` is given.
    unit : str, optional
        ``"micrometer"``, or None for pixel units.
    params : SegmentParams, optional
        Segmentation settings; default ``SegmentParams()``.
    block : int or sequence of int, optional
        Block per spatial axis, for prediction and segmentation; an int is
        the block along y and x (and z, up to 64, for a 3D model). Default:
        each stage's default.
    name : str
        The layer's name, for messages.
    report : callable, optional
        ``report(stage, done, total)``, called as blocks are done; stage is
        ``"predict"``, ``"segment"`` or ``"relabel"``.
    cancelled : callable
        Polled as the stages report progress; when it returns True the run
        stops with :class:`Cancelled`.

    Returns
    -------
    SegmentOutput
        Probabilities and labels as Dask arrays over the stores in ``folder``.

    Raises
    ------
    ValueError, UnetpipeError
        The layer does not fit the checkpoint, or a setting is bad.
    Cancelled
    """
    import dask.array as da
    import zarr

    from ..io.images import LazyImage
    from ..nn.models import load_checkpoint, resolve_model
    from ..stages.predict import predict_store
    from ..stages.preprocess import preprocess_image
    from ..stages.segment import segment_store

    folder = Path(os.fspath(folder))
    params = SegmentParams() if params is None else params
    checkpoint = resolve_model(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["model"]["config"]
    pixels = model_input(data, cfg, name=name)
    ndim = int(cfg["ndim"])
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * ndim))
    if len(spacing) < ndim:
        raise ValueError(f"spacing {spacing} does not fit the {ndim} spatial axes")
    spacing = spacing[-ndim:]
    if isinstance(block, int):
        block = (min(64, block),) * (ndim - 2) + (block, block)
    percentiles, clip = normalisation(ckpt)
    image = LazyImage(data=pixels, axes="c" + "zyx"[-ndim:], spacing=spacing, unit=unit,
                      path=f"layer {name!r}")
    quiet = Execution(progress=False)  # the widget listens; no terminal bars
    stores = [folder / "image.ome.zarr", folder / "probabilities.ome.zarr",
              folder / "labels.ome.zarr"]
    steps = [
        lambda: preprocess_image(image, stores[0], percentiles=percentiles, clip=clip,
                                 pyramid_levels=0, progress=False),
        lambda: predict_store(checkpoint, stores[0], stores[1], block=block,
                              execution=quiet),
        lambda: segment_store(stores[1], stores[2], params=params, block=block,
                              execution=quiet),
    ]
    try:
        with _progress.listening(_listener(report, cancelled)):
            for step in steps:
                if cancelled():
                    raise Cancelled()
                result = step()
    except UnetpipeError as e:
        # the temporary stores' paths mean nothing to the user: name the layer
        message = str(e)
        for store in stores:
            message = message.replace(str(store), f"layer {name!r}")
        raise UnetpipeError(message) from e
    root = zarr.open_group(str(stores[1]), mode="r")
    classes = list(root.attrs["unetpipe"]["classes"])
    probabilities = da.from_zarr(str(stores[1] / "0"))
    labels = da.from_zarr(str(stores[2] / "0"))
    return SegmentOutput(probabilities=probabilities, labels=labels, classes=classes,
                         objects=int(result.objects), folder=str(folder))


# --- progress: the stages tell the widget -------------------------------------------


# the steps whose blocks the widget shows
_SHOWN = ("predict", "segment", "relabel")


def _listener(report, cancelled):
    """A progress listener that passes ``(stage, done, total)`` of the steps the
    widget shows on to ``report``, and stops the stages at their next update
    (any step's) once ``cancelled()``."""
    def listen(stage: str, done: int, total: int) -> None:
        if cancelled():
            raise Cancelled()
        if report is not None and stage in _SHOWN:
            report(stage, done, total)
    return listen


# --- the widget ---------------------------------------------------------------------------


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued signal)."""

    progressed = Signal(str, int, int)


def _layer_spacing(layer, ndim: int) -> tuple[tuple[float, ...], str | None]:
    """A layer's pixel size in micrometres, or in pixel units when uncalibrated."""
    scale = [float(s) for s in layer.scale[-ndim:]]
    units = list(getattr(layer, "units", ()) or ())[-ndim:]
    try:
        micrometres = [u._REGISTRY.Quantity(s, u).to("micrometer").magnitude
                       for s, u in zip(scale, units, strict=True)]
    except Exception:  # pixel units (or none): not a length
        return tuple(scale), None
    return tuple(float(m) for m in micrometres), "micrometer"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    if isinstance(error, (UnetpipeError, ValueError)):
        return line or type(error).__name__
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class SegmentWidget(QWidget):
    """Segment an image layer with a trained checkpoint.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image layers are offered, and where the results go.

    Notes
    -----
    The results are added as ``"{layer} P({class})"`` image layers (one per
    class, the background hidden) and a ``"{layer} labels"`` labels layer,
    with the image layer's scale, translation and units; a second run on the
    same layer replaces their data.
    """

    finished = Signal(bool)
    """Emitted when a run ends: True when layers were added."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._temp_root: str | None = None
        self._source = None  # the layer being segmented

        defaults = SegmentParams()
        # the models on offer: the workflow's (tuned if the tune stage ran),
        # then the built-in ones; any other file can be typed or browsed
        self.checkpoint = _ModelBox(offered_models())
        self._extra: dict = {}  # tuned settings the form does not show (grow, h)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint)
        row.addWidget(browse)

        self.image = QComboBox()
        self.method = QComboBox()
        self.method.addItems(METHODS)
        self.method.setCurrentText(defaults.method)
        self.seeds = QComboBox()
        self.seeds.addItems(SEEDS)
        self.seeds.setCurrentText(defaults.seeds)
        self.threshold = self._fraction(defaults.threshold,
                                        "Cell (interior) probability that makes a seed")
        self.foreground = self._fraction(defaults.foreground,
                                         "1 - P(background) that counts as foreground")
        self.min_size = QDoubleSpinBox()
        self.min_size.setRange(0.0, 1e12)
        self.min_size.setDecimals(1)
        self.min_size.setValue(defaults.min_size)
        self.min_size.setToolTip("Smallest object kept: area (2D) or volume (3D), in the "
                                 "layer's units")
        self.block = QSpinBox()
        self.block.setRange(32, 8192)
        self.block.setSingleStep(64)
        self.block.setValue(512)
        self.block.setToolTip("Block (y and x) predicted and segmented at once; the progress "
                              "bar counts blocks")
        self.method.currentTextChanged.connect(self._sync)
        self.checkpoint.textChanged.connect(self._load_tuned)

        form = QFormLayout()
        form.addRow("Model", row)
        form.addRow("Image layer", self.image)
        form.addRow("Method", self.method)
        form.addRow("Seeds", self.seeds)
        form.addRow("Threshold", self.threshold)
        form.addRow("Foreground", self.foreground)
        form.addRow("Min. size", self.min_size)
        form.addRow("Block", self.block)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self._sync()
        self._load_tuned()

    # -- settings ----------------------------------------------------------------------

    @staticmethod
    def _fraction(value: float, tip: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(0.01, 0.99)
        box.setSingleStep(0.05)
        box.setDecimals(2)
        box.setValue(value)
        box.setToolTip(tip)
        return box

    def _sync(self, *_):
        self.seeds.setEnabled(self.method.currentText() == "watershed")

    def _browse(self):
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", self.checkpoint.text(),
                                              "Checkpoints (*.pt *.zip);;All files (*)")
        if path:
            self.checkpoint.setText(path)
            self._load_tuned()

    def _load_tuned(self, *_) -> bool:
        """Fill the form with the settings tuned for the checkpoint, if it holds any
        (``unetpipe tune``); True when it did. A checkpoint without them puts
        back the built-in defaults where the form showed another one's."""
        from ..nn.models import named_model
        from ..stages.tune import read_tuned

        path = named_model(self.checkpoint.text().strip())
        tuned = None
        if path and os.path.isfile(path):
            try:
                tuned = read_tuned(path)
            except UnetpipeError:
                tuned = None
        if tuned is None:
            if self._extra:  # the form shows another checkpoint's tuned settings
                self._show(SegmentParams())
                self._extra = {}
                self.status.setText("")
            return False
        self._show(SegmentParams(**tuned["params"]))
        self._extra = {"grow": tuned["params"].get("grow"),
                       "h": float(tuned["params"].get("h", SegmentParams.h))}
        self.status.setText(f"Settings tuned for this model ({tuned.get('objective')} "
                            f"{float(tuned.get('score', 0)):.3f} on "
                            f"{', '.join(tuned.get('validation') or [])}).")
        return True

    def _show(self, p: SegmentParams) -> None:
        """Put settings into the form."""
        self.method.setCurrentText(p.method)
        self.seeds.setCurrentText(p.seeds)
        self.threshold.setValue(float(p.threshold))
        self.foreground.setValue(float(p.foreground))
        self.min_size.setValue(float(p.min_size))

    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)
                and (layer.metadata.get("unetpipe") or {}).get("stage") != "probabilities"]

    def _refresh_layers(self, event=None):
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._refresh_layers)
        current = self.image.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image.blockSignals(True)
        self.image.clear()
        self.image.addItems(names)
        if current in names:
            self.image.setCurrentText(current)
        self.image.blockSignals(False)

    def params(self) -> SegmentParams:
        """The segmentation settings chosen."""
        return SegmentParams(method=self.method.currentText(), seeds=self.seeds.currentText(),
                             threshold=self.threshold.value(),
                             foreground=self.foreground.value(),
                             min_size=self.min_size.value(), **self._extra)

    # -- running -------------------------------------------------------------------------

    def run(self):
        """Start a run on the chosen layer (in a worker thread)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self._worker is not None:
            return
        name = self.image.currentText()
        layer = next((lay for lay in self._image_layers() if lay.name == name), None)
        checkpoint = self.checkpoint.text().strip()
        problem = ("choose an image layer" if layer is None else
                   "choose a checkpoint file" if not checkpoint else
                   f"layer {name!r} is RGB; the model needs single-channel intensities"
                   if layer.rgb else None)
        if problem:
            self.status.setText(problem)
            show_error(problem)
            return
        data = layer.data[0] if layer.multiscale else layer.data
        spacing, unit = _layer_spacing(layer, data.ndim)
        b = int(self.block.value())
        if self._temp_root is None:
            self._temp_root = tempfile.mkdtemp(prefix="unetpipe-napari-")
            _TEMP_ROOTS.append(self._temp_root)
        folder = tempfile.mkdtemp(dir=self._temp_root)
        self._cancel.clear()
        self._source = layer
        self.progress.setRange(0, 0)  # busy until the first block is done
        self.status.setText(f"Normalising {name!r}…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._worker = create_worker(
            _work, data, checkpoint=checkpoint, folder=folder, params=self.params(),
            block=b, name=name, spacing=spacing, unit=unit,
            report=self._relay.progressed.emit, cancelled=self._cancel.is_set,
            _connect={"returned": self._on_returned, "errored": self._on_errored},
        )

    def cancel(self):
        """Stop the run at the next block."""
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("Cancelling…")

    def _on_progress(self, stage: str, done: int, total: int):
        titles = {"predict": "Predicting", "segment": "Segmenting", "relabel": "Stitching"}
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status.setText(f"{titles.get(stage, stage)}: {done}/{total} blocks")

    def _end(self, ok: bool, message: str):
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.status.setText(message)
        if not ok and self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self.finished.emit(ok)

    def _on_errored(self, error: Exception):
        # a bug, not the user's error: napari's own notification shows its traceback
        self._end(False, _one_line(error))

    def _on_returned(self, outcome):
        from napari.utils.notifications import show_error, show_info

        if isinstance(outcome, str):  # cancelled, or the user's error in one line
            if outcome == "cancelled":
                show_info("Segmentation cancelled")
            else:
                show_error(outcome)
            self._end(False, outcome)
            return
        self._add_layers(outcome)
        self._end(True, f"{outcome.objects} objects")

    def _add_layers(self, out: SegmentOutput):
        layer = self._source
        ndim = out.labels.ndim
        placement = {"scale": tuple(layer.scale[-ndim:]),
                     "translate": tuple(layer.translate[-ndim:])}
        units = getattr(layer, "units", None)
        if units:
            placement["units"] = tuple(units[-ndim:])
        colormaps = {"cell": "green", "interior": "green", "boundary": "magenta"}
        # a new run on the same layer replaces the layers an earlier one added
        ours = {lay.name: lay for lay in self.viewer.layers
                if (lay.metadata.get("unetpipe") or {}).get("widget") == "segment"}
        for k, cls in enumerate(out.classes):
            name = f"{layer.name} P({cls})"
            if name in ours:
                ours[name].data = out.probabilities[k]
                continue
            self.viewer.add_image(out.probabilities[k], name=name,
                                  colormap=colormaps.get(cls, "gray"), blending="additive",
                                  contrast_limits=(0.0, 1.0), visible=cls != "background",
                                  metadata={"unetpipe": {"widget": "segment",
                                                         "stage": "probabilities",
                                                         "class": cls}},
                                  **placement)
        name = f"{layer.name} labels"
        if name in ours:
            ours[name].data = out.labels
        else:
            self.viewer.add_labels(out.labels, name=name,
                                   metadata={"unetpipe": {"widget": "segment",
                                                          "stage": "labels"}},
                                   **placement)


def _work(data, *, report, cancelled, **kwargs):
    """The worker's function: a :class:`SegmentOutput`, or a one-line message.

    The user's errors (a checkpoint that does not fit, bad settings, a file
    that cannot be read) come back as their message, shown as a notification
    without a traceback; anything else is a bug and is raised.
    """
    try:
        return _settle(segment_layer_data(data, report=report, cancelled=cancelled, **kwargs))
    except Cancelled:
        return "cancelled"
    except (UnetpipeError, ValueError, OSError) as e:
        return _one_line(e)
    finally:
        if cancelled():
            shutil.rmtree(kwargs["folder"], ignore_errors=True)


def _settle(out: SegmentOutput) -> SegmentOutput:
    """Small results into memory (their stores removed); large ones stay lazy."""
    size = (math.prod(out.probabilities.shape) * out.probabilities.dtype.itemsize
            + math.prod(out.labels.shape) * out.labels.dtype.itemsize)
    if size > IN_MEMORY_BYTES:
        return out
    probabilities, labels = np.asarray(out.probabilities), np.asarray(out.labels)
    shutil.rmtree(out.folder, ignore_errors=True)
    return SegmentOutput(probabilities=probabilities, labels=labels, classes=out.classes,
                         objects=out.objects, folder=None)
