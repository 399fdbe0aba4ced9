"""Training the U-Net: weighted cross-entropy, elastic augmentation, resumable.

:func:`train_model` trains on random patches of the training images (read
from their preprocessed and targets stores) and validates every
``train.val_every`` iterations by predicting the validation images whole
(overlap-tile) and segmenting them. With ``train.select: segmentation`` (the
default) they are segmented as the workflow will segment them (the
``segment`` settings the config sets, the built-in defaults for the rest)
and scored by mean AP over IoU 0.5:0.95; with ``components``, by AP at IoU
0.5 of the connected components of the cell class. Without validation
images, some training images are held out; with a single training image, a
slab at the end of its longest axis (:func:`hold_out_region`). Training
stops early once ``train.patience`` validations in a row bring no
improvement. It writes to the output folder (``results/model/``):

``checkpoint_best.pt``
    The weights with the best validation score (the last weights when there
    is nothing to validate on).
``checkpoint_last.pt``
    Everything a resumed run needs: weights, optimiser, schedule and random
    states, history, and the best weights so far. Written every
    ``train.checkpoint_every`` iterations. A run started again with the same
    model, targets and data continues from it; see :func:`resumable_checkpoint`.
``history.csv``, ``training_curves.png``
    Training loss and validation AP per iteration.

Batches and augmentations are drawn from generators seeded by ``(seed,
iteration)``, and the global torch generator (dropout) is saved in the
checkpoint, so a resumed run repeats the interrupted one exactly with
deterministic settings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..core.boxes import box_text
from ..core.device import select_device
from ..core.errors import ConfigError, InputError, UnetpipeError
from ..io.images import atomic_output
from ..nn.checkpoint import FORMAT, VERSION, plain, save_checkpoint
from ..nn.models import load_checkpoint

if TYPE_CHECKING:
    import torch

    from ..nn.data import PatchSampler, TrainingSample
    from ..nn.loss import SegmentationLoss
    from ..nn.transforms import Augment
    from .instances import SegmentParams

log = logging.getLogger("unetpipe")

# Default patch per spatial axis.
DEFAULT_PATCH = {2: (128, 128), 3: (32, 96, 96)}
# Validation instances smaller than this (pixels) are dropped as fragments.
VAL_MIN_SIZE = {2: 8, 3: 27}
# Training loss is averaged into one history row per this many iterations.
LOG_EVERY = 10
# Keys that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("iterations", "minutes", "val_every", "checkpoint_every", "device",
                      "compile", "resume", "patience")
HISTORY_FIELDS = ("iteration", "loss", "lr", "val_ap", "val_mean_ap", "val_iou", "val_tp",
                  "val_fp", "val_fn", "seconds")
# Smallest slab (pixels along the split axis) held out of a single training
# image, and smallest part left to train on.
MIN_HOLD_OUT = 32


@dataclass(frozen=True)
class TrainResult:
    """What a training run did."""

    out_dir: str
    iterations: int
    start_iteration: int
    best_ap: float | None
    best_iteration: int | None
    best_mean_ap: float | None
    final_loss: float | None
    seconds: float
    iterations_per_second: float
    device: str
    stopped_by: str


@dataclass
class ValImage:
    """A validation image held in memory with its ground truth."""

    name: str
    image: np.ndarray  # (C, *S) float32
    gt: np.ndarray  # S, integer instance labels
    spacing: tuple[float, ...] | None = None  # pixel size, where the store is calibrated


# --- small pieces ---------------------------------------------------------------


class LRSchedule:
    """Learning rate as a function of training progress.

    Linear warm-up over ``warmup`` iterations, then ``cosine`` (down to 1% of
    the peak), ``step`` (/10 at 60% and 85% of the budget) or ``constant``.
    Progress is the larger of the iteration and time fractions of the budget,
    so a run that ends on its time budget has annealed too.
    """

    def __init__(self, *, lr: float, kind: str = "cosine", warmup: int = 0):
        if kind not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.lr, self.kind, self.warmup = float(lr), kind, int(warmup)
        self.last_lr = float(lr)

    def __call__(self, iteration: int, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.kind == "cosine":
            f = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p))
        elif self.kind == "step":
            f = 1.0 if p < 0.6 else 0.1 if p < 0.85 else 0.01
        else:
            f = 1.0
        if self.warmup:
            f *= min(1.0, (iteration + 1) / self.warmup)
        self.last_lr = self.lr * f
        return self.last_lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "kind": self.kind, "warmup": self.warmup, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        self.last_lr = float(state["last_lr"])


def _batch_seed(seed: int, iteration: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0])


def fingerprint(parts: dict) -> str:
    """A short hash of what must not change for a run to be resumed."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_val_image(store_path: str | os.PathLike, *, name: str | None = None,
                   region: Sequence[Sequence[int]] | None = None) -> ValImage:
    """A preprocessed store's image and ground truth, in memory, for validation.

    ``region`` (``(start, stop)`` per spatial axis) reads only that box.
    """
    import zarr

    from ..inputs.samples import sample_name

    store_path = os.fspath(store_path)
    box = (...,) if region is None else tuple(slice(int(a), int(b)) for a, b in region)
    try:
        image = np.asarray(zarr.open_array(os.path.join(store_path, "0"), mode="r")
                           [(slice(None), *box)])
    except Exception as e:
        raise InputError(store_path, f"cannot read the preprocessed image: {e}") from e
    gt_path = os.path.join(store_path, "labels", "gt", "0")
    if not os.path.isdir(gt_path):
        raise InputError(store_path, "validation images need ground-truth labels (labels/gt)")
    gt = np.asarray(zarr.open_array(gt_path, mode="r")[box])
    attrs = _store_attrs(store_path)
    spacing = tuple(float(v) for v in attrs["spacing"]) if attrs.get("unit") and \
        attrs.get("spacing") else None
    return ValImage(name or sample_name(store_path), image.astype(np.float32, copy=False), gt,
                    spacing)


def validate(model, images: Sequence[ValImage], *, mode: str, device=None,
             amp: bool = False, params: SegmentParams | None = None) -> dict:
    """Validation scores, pooled over the images.

    Each image is predicted whole (overlap-tile) and segmented: with
    ``params``, by :func:`unetpipe.stages.instances.segment_array` as the
    segment stage would (``min_size`` in the units of the image's spacing);
    without, as the connected components of the cell class
    (:func:`unetpipe.stages.instances.connected_instances`). Match counts are
    summed over the images (:func:`unetpipe.stages.metrics.pool_scores`)
    before the scores: ``ap`` = AP at IoU 0.5 = TP / (TP + FP + FN),
    ``mean_ap`` over IoU 0.50:0.95, ``iou`` the mean IoU of the matched
    objects, and the counts at 0.5. The model is left in eval mode.
    """
    from ..nn.tiles import predict_array
    from .instances import connected_instances, segment_array
    from .metrics import pool_scores, score

    scores = []
    for item in images:
        probs = predict_array(model, item.image, device=device, amp=amp)
        if params is None:
            labels = connected_instances(probs, mode=mode, min_size=VAL_MIN_SIZE[item.gt.ndim])
        else:
            labels = segment_array(probs, params=params, spacing=item.spacing)
        scores.append(score(item.gt, labels))
    pooled = pool_scores(scores)
    tp, fp, fn = pooled.counts(0.5)
    return {"ap": pooled.ap(0.5), "mean_ap": pooled.mean_ap, "tp": tp, "fp": fp, "fn": fn,
            "iou": pooled.mean_matched_iou}


def _rank(scores: dict, select: str) -> tuple:
    """What makes validation scores the best: mean AP (segmentation) or AP at 0.5
    (components) first; ties to AP at 0.5, then to the better outlines."""
    if select == "components":
        return (scores["ap"], scores["iou"])
    return (scores.get("mean_ap") or 0.0, scores["ap"], scores["iou"])


def write_history(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """history.csv, written atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})


def plot_history(rows: Sequence[dict], path: str | os.PathLike, *,
                 select: str = "segmentation") -> None:
    """training_curves.png: training loss and validation AP against iterations, the
    checkpoint kept (by ``select``, as training ranks them) marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(os.fspath(path))
    loss = [(r["iteration"], r["loss"]) for r in rows if r.get("loss") is not None]
    scored = [r for r in rows if r.get("val_ap") is not None]
    val = [(r["iteration"], r["val_ap"]) for r in scored]
    mean = [(r["iteration"], r["val_mean_ap"]) for r in scored
            if r.get("val_mean_ap") not in (None, "")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if loss:
        ax.plot(*zip(*loss, strict=True), color="tab:blue", lw=1.2, label="training loss")
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    if val:
        ax2.plot(*zip(*val, strict=True), color="tab:red", marker="o", ms=3, lw=1.2,
                 label="validation AP@0.5")
    if mean:
        ax2.plot(*zip(*mean, strict=True), color="tab:purple", marker="s", ms=3, lw=1.2,
                 label="validation mean AP")
        ax2.legend(loc="lower right", fontsize=8)
    if scored:
        top = max(scored, key=lambda r: _rank(
            {"ap": r["val_ap"], "mean_ap": r.get("val_mean_ap") or None,
             "iou": r.get("val_iou") or 0.0}, select))
        value = top["val_ap"] if select == "components" or top.get("val_mean_ap") in (None, "") \
            else top["val_mean_ap"]
        ax2.annotate(f"kept: {value:.3f} at {top['iteration']}",
                     (top["iteration"], value), textcoords="offset points",
                     xytext=(-60, -15), color="tab:red", fontsize=8)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation AP", color="tab:red")
    ax.set_title("unetpipe training")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": "unetpipe"})
    plt.close(fig)


def resumable_checkpoint(path: str | os.PathLike, *, fingerprint_: str, iterations: int,
                         minutes: float | None) -> dict | None:
    """The checkpoint to resume from, or None to start afresh (with the reason logged).

    A run resumes when ``checkpoint_last.pt`` exists, was written for the
    same model, targets, augmentation and training data (its fingerprint),
    and has budget left under the current settings.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    try:
        ckpt = load_checkpoint(path)
    except InputError as e:
        log.warning("train: not resuming: %s", e)
        return None
    if ckpt.get("fingerprint") != fingerprint_:
        log.info("train: %s is from a run with other settings or data; starting afresh", path)
        return None
    it, elapsed = int(ckpt["iteration"]), float(ckpt["elapsed"])
    if ckpt.get("stopped_by") == "plateau":
        log.info("train: %s holds a run that stopped on a validation plateau at iteration %d; "
                 "starting afresh", path, it)
        return None
    if it >= iterations or (minutes is not None and elapsed >= 60 * minutes):
        log.info("train: %s holds a finished run (iteration %d, %.0f s); starting afresh",
                 path, it, elapsed)
        return None
    return ckpt


# --- the training run -------------------------------------------------------------


def train_model(train_stores: Sequence[tuple[str, str]], val_stores: Sequence[str],
                out_dir: str | os.PathLike, *, config: dict, progress: bool = True,
                stop_at: int | None = None) -> TrainResult:
    """Train a U-Net and write checkpoints, history and curves to ``out_dir``.

    Parameters
    ----------
    train_stores : sequence of (str, str)
        ``(preprocessed store, targets store)`` per training image.
    val_stores : sequence of str
        Preprocessed stores (with ``labels/gt``) of the validation images.
        When empty, ``train.val_fraction`` of the training images are held
        out instead.
    out_dir : str or os.PathLike
        Output folder, e.g. ``results/model``.
    config : dict
        A validated config; sections ``model``, ``train`` and ``augment`` are
        used and stored in the checkpoints, with the target and
        normalisation settings found in the stores.
    progress : bool
        Show a progress bar.
    stop_at : int, optional
        Stop after this iteration as if the budget ended there, without
        marking the run finished (for tests and benchmarks).

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        A store is missing or the training images do not fit together.
    ConfigError
        A setting does not fit the data (patch shape, device).
    """
    import torch

    # process-wide switches that training sets: put back afterwards
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        return _train_model(train_stores, val_stores, out_dir, config=config,
                            progress=progress, stop_at=stop_at)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark


@dataclass
class _Run:
    """One training run: what it trains, with what, and how far it has got.

    The steps of :func:`_train_model` share it. The fields from ``start`` on
    change as the run goes and are what ``checkpoint_last.pt`` carries over
    to a resumed run.
    """

    tcfg: dict
    mcfg: dict
    acfg: dict
    out_dir: Path
    samples: list[TrainingSample]
    val_images: list[ValImage]
    patch: tuple[int, ...]
    device: torch.device
    amp: bool
    model: torch.nn.Module
    model_config: dict
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loss_fn: SegmentationLoss
    augment: Augment
    targets_info: dict
    normalization: dict
    data_info: dict
    # the segmentation validation scores (None: connected components)
    segment: SegmentParams | None = None
    fingerprint: str = ""
    # made after resuming, so that they see the restored weights
    train_net: torch.nn.Module | None = None
    sampler: PatchSampler | None = None
    # progress
    start: int = 0
    elapsed0: float = 0.0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    iteration: int = 0
    elapsed: float = 0.0
    t0: float = 0.0
    # the loss of the iterations since the last history row
    loss_sum: float = 0.0
    loss_n: int = 0
    last_loss: float | None = None
    stopped_by: str = "iterations"

    @property
    def first(self) -> TrainingSample:
        """The first training image, which the others must match."""
        return self.samples[0]

    @property
    def ndim(self) -> int:
        return len(self.first.shape)

    @property
    def mode(self) -> str:
        return self.first.mode

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def iterations(self) -> int:
        return int(self.tcfg["iterations"])

    @property
    def minutes(self) -> float | None:
        return self.tcfg["minutes"]

    @property
    def last_path(self) -> Path:
        return self.out_dir / "checkpoint_last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "checkpoint_best.pt"


def _train_model(train_stores, val_stores, out_dir, *, config, progress, stop_at):
    """:func:`train_model` without restoring the process-wide torch switches.

    Set up (data, model, resumption), run the iterations, then finish
    (final validation and the files).
    """
    t_setup = time.perf_counter()
    run = _set_up(train_stores, val_stores, out_dir, config=config)
    _log_setup(run, time.perf_counter() - t_setup)
    _run_iterations(run, stop_at=stop_at, progress=progress)
    finished = (stop_at is None or run.iteration >= run.iterations
                or run.stopped_by in ("minutes", "plateau"))
    _finish(run, finished=finished)
    done = run.iteration - run.start
    seconds = time.perf_counter() - run.t0
    return TrainResult(
        out_dir=os.fspath(run.out_dir), iterations=run.iteration, start_iteration=run.start,
        best_ap=None if run.best is None else run.best["ap"],
        best_iteration=None if run.best is None else run.best["iteration"],
        best_mean_ap=None if run.best is None else run.best.get("mean_ap"),
        final_loss=run.last_loss, seconds=seconds,
        iterations_per_second=done / seconds if seconds > 0 else 0.0,
        device=run.device.type, stopped_by=run.stopped_by,
    )


# --- setting up ---------------------------------------------------------------------


def _set_up(train_stores, val_stores, out_dir, *, config: dict) -> _Run:
    """Open the data, build the model and optimiser, and resume if there is a run to resume.

    Parameters
    ----------
    train_stores, val_stores, out_dir, config
        As for :func:`train_model`.

    Returns
    -------
    _Run
        Ready for :func:`_run_iterations`, at the iteration to start from.
    """
    import torch

    from ..nn.data import PatchSampler
    from ..nn.loss import SegmentationLoss
    from ..nn.model import UNet
    from ..nn.transforms import Augment

    tcfg, mcfg, acfg = config["train"], config["model"], config["augment"]
    out_dir = Path(os.fspath(out_dir))
    if not train_stores:
        raise ConfigError("no training images: set data.train.images and data.train.labels")
    train_stores, val_stores, region = _hold_out(train_stores, val_stores, tcfg)
    samples, val_images = _open_data(train_stores, val_stores, region)
    first = samples[0]
    ndim = len(first.shape)
    model_config, patch = _model_config(first, mcfg, tcfg)

    device = select_device(tcfg["device"])
    out_dir.mkdir(parents=True, exist_ok=True)  # once the data and settings are known good
    cuda = device.type == "cuda"
    amp = bool(tcfg["bf16"]) and cuda
    if tcfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=False)
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True

    # the initial weights (and so the whole run) follow from the seed
    torch.manual_seed(tcfg["seed"])
    model = UNet(**model_config)
    model_config = model.config  # normalised (explicit pooling list)
    init = _initial_weights(tcfg.get("init"), model)
    model.to(device)
    if amp:
        model.to(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)
    params = list(model.parameters())
    if tcfg["optimizer"] == "adam":
        opt_cls = torch.optim.AdamW if tcfg["weight_decay"] else torch.optim.Adam
        optimizer = opt_cls(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    else:
        optimizer = torch.optim.SGD(params, lr=tcfg["lr"], momentum=tcfg["momentum"],
                                    weight_decay=tcfg["weight_decay"])
    schedule = LRSchedule(lr=tcfg["lr"], kind=tcfg["schedule"], warmup=tcfg["warmup"])
    loss_fn = SegmentationLoss(dice=tcfg["dice"])
    augment = Augment(elastic=acfg["elastic"], elastic_sigma=acfg["elastic_sigma"],
                      elastic_grid=acfg["elastic_grid"],
                      elastic_probability=acfg["elastic_probability"], flip=acfg["flip"],
                      rot90=acfg["rot90"], scale=acfg["scale"], shift=acfg["shift"],
                      gamma=acfg["gamma"], noise=acfg["noise"])

    targets_info = {k: first.attrs.get(k) for k in ("mode", "classes", "w0", "sigma",
                                                    "class_balance")}
    pre_attrs = _store_attrs(train_stores[0][0])
    normalization = {"percentiles": pre_attrs.get("percentiles"), "clip": pre_attrs.get("clip")}
    data_info = {"ndim": ndim, "channels": first.channels, "spacing": list(first.spacing),
                 "unit": first.attrs.get("unit"), "patch": list(patch),
                 "train": [s.name for s in samples], "val": [v.name for v in val_images]}
    if region is not None:
        data_info["val_region"] = {"sample": val_images[0].name,
                                   "box": [list(b) for b in region["val"]],
                                   "train_box": [list(b) for b in region["train"]]}
    if init is not None:
        data_info["init"] = init["record"]
        _check_init_normalisation(init, normalization)
    from .instances import describe_sources, resolve_params

    segment, sources = resolve_params(config.get("segment", {}),
                                      None if init is None else init["tuned"])
    if tcfg["select"] == "segmentation" and val_images:
        log.info("train: validating by mean AP of the segmentation with %s",
                 describe_sources(segment, sources))
    run = _Run(tcfg=tcfg, mcfg=mcfg, acfg=acfg, out_dir=out_dir, samples=samples,
               val_images=val_images, patch=patch, device=device, amp=amp, model=model,
               model_config=model_config, optimizer=optimizer, schedule=schedule,
               loss_fn=loss_fn, augment=augment, targets_info=targets_info,
               normalization=normalization, data_info=data_info,
               segment=segment if tcfg["select"] == "segmentation" else None)
    run.fingerprint = _run_fingerprint(run, train_stores, val_stores)
    _resume(run)

    run.train_net = torch.compile(model) if tcfg["compile"] else model
    run.sampler = PatchSampler(samples, patch_shape=patch, foreground=tcfg["foreground"],
                               seed=tcfg["seed"])
    return run


def hold_out_region(shape: Sequence[int], fraction: float
                    ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None:
    """The boxes a single training image is split into: (train, validation).

    The validation box is a slab at the end of the longest in-plane axis (y
    or x), ``fraction`` of it and at least :data:`MIN_HOLD_OUT` pixels; the
    rest, at least :data:`MIN_HOLD_OUT` pixels, trains. None when the image
    is too small to split. Boxes are ``(start, stop)`` per spatial axis.

    Examples
    --------
    >>> hold_out_region((200, 300), 0.2)
    (((0, 200), (0, 240)), ((0, 200), (240, 300)))
    >>> hold_out_region((40, 50), 0.2) is None
    True
    """
    shape = [int(n) for n in shape]
    axis = max(range(len(shape) - 2, len(shape)), key=lambda a: (shape[a], a))
    n = shape[axis]
    held = max(MIN_HOLD_OUT, round(fraction * n))
    if n - held < MIN_HOLD_OUT:
        return None
    train = [(0, s) for s in shape]
    val = [(0, s) for s in shape]
    train[axis], val[axis] = (0, n - held), (n - held, n)
    return tuple(train), tuple(val)


def _hold_out(train_stores, val_stores, tcfg: dict) -> tuple[list, list, dict | None]:
    """The training and validation stores, as paths, with data held out if need be.

    Without validation images, ``train.val_fraction`` of the training images
    (drawn with ``train.seed``) validate instead; with a single training
    image, a slab of it (:func:`hold_out_region`), returned as
    ``{"train": box, "val": box}`` (else None).
    """
    from ..inputs.samples import sample_name

    train_stores = [(os.fspath(a), os.fspath(b)) for a, b in train_stores]
    val_stores = [os.fspath(v) for v in val_stores]
    if not val_stores and tcfg["val_fraction"] > 0 and len(train_stores) == 1:
        import zarr

        store = train_stores[0][0]
        try:
            shape = zarr.open_array(os.path.join(store, "0"), mode="r").shape[1:]
        except Exception as e:
            raise InputError(store, f"cannot open the preprocessed image (level 0): {e}") from e
        boxes = hold_out_region(shape, tcfg["val_fraction"])
        if boxes is None:
            log.warning("train: no validation images, and the one training image %s (%s) is "
                        "too small to hold part of it out; validating on nothing",
                        sample_name(store), "x".join(map(str, shape)))
            return train_stores, [], None
        log.info("train: no validation images configured; holding out %s of the one training "
                 "image %s (%s), never trained on", box_text(boxes[1]), sample_name(store),
                 "x".join(map(str, shape)))
        return train_stores, [store], {"train": boxes[0], "val": boxes[1]}
    if not val_stores and tcfg["val_fraction"] > 0 and len(train_stores) >= 2:
        rng = np.random.default_rng(tcfg["seed"])
        # at least one image held out, at least one left to train on
        n_val = min(max(1, round(tcfg["val_fraction"] * len(train_stores))),
                    len(train_stores) - 1)
        held = set(rng.choice(len(train_stores), n_val, replace=False).tolist())
        val_stores = [train_stores[i][0] for i in sorted(held)]
        train_stores = [s for i, s in enumerate(train_stores) if i not in held]
        log.info("train: no validation images configured; holding out %s",
                 ", ".join(sample_name(v) for v in val_stores))
    return train_stores, val_stores, None


def _open_data(train_stores: list, val_stores: list,
               region: dict | None = None) -> tuple[list, list[ValImage]]:
    """The training samples and validation images, checked to fit together.

    ``region`` (from :func:`_hold_out`) splits the one training image.

    Raises
    ------
    InputError
        An image differs from the first training image in mode, channels or
        dimensionality.
    """
    from ..nn.data import open_training_sample

    box = None if region is None else region["train"]
    samples = [open_training_sample(img, tgt, region=box) for img, tgt in train_stores]
    first = samples[0]
    for s in samples[1:]:
        if (s.mode, s.channels, len(s.shape)) != (first.mode, first.channels, len(first.shape)):
            raise InputError(train_stores[samples.index(s)][1],
                             f"{s.name}: {s.mode}, {s.channels} channel(s), {len(s.shape)}D "
                             f"does not match {first.name}: {first.mode}, {first.channels} "
                             f"channel(s), {len(first.shape)}D")
    val_images = [load_val_image(v, region=None if region is None else region["val"])
                  for v in val_stores]
    ndim = len(first.shape)
    for v in val_images:
        if v.image.shape[0] != first.channels or v.gt.ndim != ndim:
            raise InputError(v.name, f"validation image of shape {v.image.shape} does not match "
                                     f"the training images ({first.channels} channel(s), {ndim}D)")
    return samples, val_images


_INIT_KEYS = {
    "ndim": "the training images' dimensionality",
    "in_channels": "data.channels (the training images' channels)",
    "out_channels": "targets.mode (2 classes: two_class, 3: three_class)",
    "depth": "model.depth", "features": "model.features", "padding": "model.padding",
    "norm": "model.norm", "pooling": "model.anisotropic and data.spacing (the pooling per level)",
}
"""The network settings a model to start from must share with the run, and
where the run's come from. Dropout has no weights, so the config's is used."""


def _initial_weights(init: str | None, model) -> dict | None:
    """Load ``train.init``'s weights into ``model``; None without ``train.init``.

    Returns
    -------
    dict or None
        ``record`` (what the checkpoint notes: the model as given and its
        sha256), ``tuned`` (its tuned segmentation settings, or None) and
        ``normalization``.

    Raises
    ------
    ConfigError
        The model's network differs from the one the config and data ask for;
        the message names every setting that differs, with both values.
    InputError
        The model cannot be opened.
    """
    if not init:
        return None
    from ..nn.checkpoint import SEGMENT_PARAMS
    from ..nn.model import UNet
    from ..nn.models import load_checkpoint, resolve_model
    from .predict import model_sha256

    path = resolve_model(init)
    ckpt = load_checkpoint(path)
    theirs = UNet(**ckpt["model"]["config"]).config
    ours = model.config
    differ = [k for k in _INIT_KEYS if theirs.get(k) != ours.get(k)]
    if "depth" in differ or "ndim" in differ:
        differ = [k for k in differ if k != "pooling"]  # follows from those
    if differ:
        parts = "; ".join(f"{k} {theirs.get(k)} in the model, {ours.get(k)} here (from "
                          f"{_INIT_KEYS[k]})" for k in differ)
        named = init if path == init else f"{init} ({path})"
        raise ConfigError(f"config key 'train.init': {named} is a different network "
                          f"from the one this run would train: {parts}. Fine-tuning starts "
                          "from that model's network: set these to the model's values (see "
                          f"`unetpipe info {init}`), or set train.init: null to train from "
                          "random weights")
    model.load_state_dict(ckpt["model"]["state_dict"])
    tuned = (ckpt.get(SEGMENT_PARAMS) or {}).get("params")
    log.info("train: starting from the weights of %s%s (trained %s iterations)", init,
             "" if path == init else f" ({path})", ckpt.get("iteration", "?"))
    # the name as given and the weights' digest, not where the file lies: a
    # moved project resumes
    return {"record": {"model": init, "sha256": model_sha256(path)},
            "tuned": tuned if isinstance(tuned, dict) else None,
            "normalization": ckpt.get("normalization") or {}}


def _check_init_normalisation(init: dict, normalization: dict) -> None:
    """Warn when the training images were normalised unlike the model's."""
    theirs = init["normalization"]
    if theirs.get("percentiles") is None:
        return
    mine = (list(normalization.get("percentiles") or []), bool(normalization.get("clip")))
    if mine != (list(theirs["percentiles"]), bool(theirs.get("clip"))):
        log.warning("train: the training images were preprocessed with percentiles %s%s, the "
                    "model to start from (train.init) with %s%s; set preprocess.percentiles "
                    "and preprocess.clip to the model's to start from what it knows",
                    mine[0], " (clipped)" if mine[1] else "", list(theirs["percentiles"]),
                    " (clipped)" if theirs.get("clip") else "")


def _model_config(first: TrainingSample, mcfg: dict, tcfg: dict) -> tuple[dict, tuple]:
    """The U-Net's settings for these images, and the patch shape it accepts.

    Raises
    ------
    ConfigError
        ``train.patch`` has the wrong number of axes.
    """
    from ..nn.model import anisotropic_pooling, pooling_factor, valid_input_shape

    ndim = len(first.shape)
    n_classes = 2 if first.mode == "two_class" else 3
    pooling = None
    if ndim == 3 and mcfg["anisotropic"]:
        pooling = anisotropic_pooling(first.spacing, depth=mcfg["depth"])
    model_config = dict(ndim=ndim, in_channels=first.channels, out_channels=n_classes,
                        depth=mcfg["depth"], features=mcfg["features"], padding=mcfg["padding"],
                        norm=mcfg["norm"], dropout=mcfg["dropout"], pooling=pooling)
    arch = dict(ndim=ndim, depth=mcfg["depth"], pooling=pooling, padding=mcfg["padding"])
    asked = tuple(tcfg["patch"] or DEFAULT_PATCH[ndim])
    if len(asked) != ndim:
        raise ConfigError(f"config key 'train.patch': {list(asked)} has {len(asked)} values but "
                          f"the training images are {ndim}D")
    patch = tuple(valid_input_shape(asked, **arch))
    if patch != asked:
        log.info("train: patch %s rounded up to %s, which the network accepts", list(asked),
                 list(patch))
    if mcfg["norm"] == "batch" and mcfg["padding"] == "same":
        # batch statistics of one value per channel cannot be taken
        factor = pooling_factor(ndim=ndim, depth=mcfg["depth"], pooling=pooling)
        bottom = math.prod(p // f for p, f in zip(patch, factor, strict=True))
        if bottom * int(tcfg["batch_size"]) <= 1:
            raise ConfigError(f"config key 'train.batch_size': {tcfg['batch_size']} patch(es) of "
                              f"{list(patch)} leave one value per channel at the network's "
                              "lowest level, too few for batch normalisation; give a larger "
                              "train.patch or train.batch_size (or model.norm: none)")
    return model_config, patch


def _settings(attrs: dict) -> dict:
    # what a store was made with, not where it was made: a moved project resumes
    return {k: v for k, v in attrs.items() if k not in ("source", "labels_source")}


def _run_fingerprint(run: _Run, train_stores: list, val_stores: list) -> str:
    """The fingerprint of what must match for ``checkpoint_last.pt`` to be resumed."""
    return fingerprint({
        "model": run.model_config, "targets": [_settings(s.attrs) for s in run.samples],
        "preprocessed": [_settings(_store_attrs(img)) for img, _ in train_stores]
        + [_settings(_store_attrs(v)) for v in val_stores],
        "val_shapes": [list(v.image.shape) for v in run.val_images],
        "shapes": [list(s.shape) for s in run.samples], "data": run.data_info,
        "train": {k: v for k, v in run.tcfg.items() if k not in _RESUMABLE_CHANGES},
        "augment": run.acfg, "normalization": run.normalization,
        "segment": None if run.segment is None else asdict(run.segment),
    })


def _resume(run: _Run) -> None:
    """Restore the state of an interrupted run from ``checkpoint_last.pt``, if resumable.

    See :func:`resumable_checkpoint`.
    """
    import torch

    ckpt = resumable_checkpoint(run.last_path, fingerprint_=run.fingerprint,
                                iterations=run.iterations,
                                minutes=run.minutes) if run.tcfg["resume"] else None
    if ckpt is None:
        return
    run.model.load_state_dict(ckpt["model"]["state_dict"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if run.cuda and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    run.start, run.elapsed0 = int(ckpt["iteration"]), float(ckpt["elapsed"])
    run.history, run.best = list(ckpt["history"]), ckpt.get("best")
    pending = ckpt.get("pending_loss", (0.0, 0))
    run.loss_sum, run.loss_n = float(pending[0]), int(pending[1])
    log.info("train: resuming from %s at iteration %d (%.0f s done)", run.last_path, run.start,
             run.elapsed0)
    if run.best is not None and not run.best_path.exists():
        _keep_best(run)


def _log_setup(run: _Run, seconds: float) -> None:
    first, mcfg = run.first, run.mcfg
    log.info("train: %d training and %d validation image(s), %s, %s; U-Net %dD depth %d, "
             "%d features, %s padding, %s norm, %.2fM parameters; patch %s, batch %d; "
             "device %s%s; setup %.1f s", len(run.samples), len(run.val_images), run.mode,
             "spacing " + "x".join(f"{s:g}" for s in first.spacing), run.ndim, mcfg["depth"],
             mcfg["features"], mcfg["padding"], mcfg["norm"],
             sum(p.numel() for p in run.model.parameters()) / 1e6,
             "x".join(map(str, run.patch)), run.tcfg["batch_size"], run.device.type,
             " (bf16, channels_last)" if run.amp else "", seconds)


# --- running ------------------------------------------------------------------------


def _run_iterations(run: _Run, *, stop_at: int | None, progress: bool) -> None:
    """Train from ``run.start`` until the budget (or ``stop_at``) ends.

    Appends a history row every :data:`LOG_EVERY` iterations, validates every
    ``train.val_every`` and saves ``checkpoint_last.pt`` on validating or
    every ``train.checkpoint_every`` iterations. Sets ``run.stopped_by`` to
    ``"minutes"`` when the time budget ends the run.
    """
    from ..nn.data import Prefetcher

    tcfg = run.tcfg
    end = run.iterations if stop_at is None else min(run.iterations, int(stop_at))
    run.model.train()
    run.t0 = time.perf_counter()
    run.elapsed = run.elapsed0
    run.iteration = run.start
    bar = None
    if progress:
        from ..core.progress import bar as make_bar

        bar = make_bar(total=run.iterations, initial=run.start, desc="train", unit="it")
    last_saved = run.start
    try:
        with Prefetcher(run.sampler, batch_size=tcfg["batch_size"], start=run.start) as batches:
            while run.iteration < end:
                if run.minutes is not None and run.elapsed >= 60 * run.minutes:
                    run.stopped_by = "minutes"
                    break
                index, batch = next(batches)
                assert index == run.iteration
                value, lr = _step(run, batch)
                run.iteration += 1
                run.elapsed = run.elapsed0 + time.perf_counter() - run.t0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2g}", refresh=False)
                validate_now = run.iteration % tcfg["val_every"] == 0
                if (run.iteration % LOG_EVERY == 0 or validate_now
                        or run.iteration == run.iterations):
                    _record(run, lr=lr, validate_now=validate_now)
                if validate_now or run.iteration - last_saved >= tcfg["checkpoint_every"]:
                    _save_last(run, finished=False)
                    last_saved = run.iteration
                    if validate_now:
                        write_history(run.history, run.out_dir / "history.csv")
                if validate_now and _plateau(run):
                    run.stopped_by = "plateau"
                    log.info("train: stopping at iteration %d: no better validation score in "
                             "%d validations (train.patience), best at iteration %d",
                             run.iteration, run.tcfg["patience"], run.best["iteration"])
                    break
    finally:
        if bar is not None:
            bar.close()


def _step(run: _Run, batch: tuple) -> tuple[float, float]:
    """One optimisation step on ``batch`` at iteration ``run.iteration``.

    Returns
    -------
    (float, float)
        The loss and the learning rate.

    Raises
    ------
    UnetpipeError
        The loss is not finite.
    """
    import torch

    tcfg, device, iteration, iterations = run.tcfg, run.device, run.iteration, run.iterations
    x, t, w = batch
    x = torch.from_numpy(x).to(device, non_blocking=True)
    t = torch.from_numpy(t).to(device, non_blocking=True)
    w = torch.from_numpy(w).to(device, non_blocking=True)
    gen = torch.Generator().manual_seed(_batch_seed(tcfg["seed"], iteration, 1))
    x, t, w = run.augment(x, t, w, generator=gen)
    if run.amp:
        x = x.contiguous(memory_format=torch.channels_last if run.ndim == 2
                         else torch.channels_last_3d)
    # the time fraction would make the rate depend on the machine's speed
    minutes = run.minutes
    progress_frac = iteration / iterations if tcfg["deterministic"] else max(
        iteration / iterations, run.elapsed / (60 * minutes) if minutes else 0.0)
    lr = run.schedule(iteration, progress_frac)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
        logits = run.train_net(x)
    loss = run.loss_fn(logits, t.long(), w)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise UnetpipeError(f"training diverged at iteration {iteration} (loss "
                            f"{value}); lower train.lr")
    run.loss_sum, run.loss_n, run.last_loss = run.loss_sum + value, run.loss_n + 1, value
    return value, lr


def _record(run: _Run, *, lr: float, validate_now: bool) -> None:
    """Append a history row for the iterations since the last, validating if it is time."""
    row = {"iteration": run.iteration, "loss": round(run.loss_sum / run.loss_n, 6),
           "lr": lr, "seconds": round(run.elapsed, 2)}
    run.loss_sum, run.loss_n = 0.0, 0
    if validate_now:
        scores = _validate(run)
        run.elapsed = run.elapsed0 + time.perf_counter() - run.t0
        if scores is not None:
            row.update(val_ap=round(scores["ap"], 6), val_mean_ap=round(scores["mean_ap"], 6),
                       val_iou=round(scores["iou"], 6), val_tp=scores["tp"],
                       val_fp=scores["fp"], val_fn=scores["fn"])
            log.info("train: iteration %d/%d, loss %.4f, validation AP@0.5 %.3f, mean AP "
                     "%.3f (best %s at %d), %.0f s", run.iteration, run.iterations,
                     row["loss"], scores["ap"], scores["mean_ap"], _best_text(run),
                     run.best["iteration"], run.elapsed)
    run.history.append(row)


# --- validating ---------------------------------------------------------------------


def _validate(run: _Run) -> dict | None:
    """Validate at ``run.iteration``, keeping the weights as the best if they are.

    Returns
    -------
    dict or None
        The scores of :func:`validate`; None without validation images.
    """
    if not run.val_images:
        return None
    scores = validate(run.model, run.val_images, mode=run.mode, device=run.device, amp=run.amp,
                      params=run.segment)
    run.model.train()
    best = run.best
    select = run.tcfg["select"]
    if best is None or _rank(scores, select) > _rank(best, select):
        run.best = {"iteration": run.iteration, "ap": float(scores["ap"]),
                    "mean_ap": float(scores["mean_ap"]), "iou": float(scores["iou"]),
                    "select": select, "state_dict": _state_dict_cpu(run.model)}
        _keep_best(run)
    return scores


def _plateau(run: _Run) -> bool:
    """Whether ``train.patience`` validations in a row have passed without a new best."""
    patience = run.tcfg["patience"]
    if patience is None or run.best is None or run.best.get("ap") is None:
        return False
    return run.iteration - int(run.best["iteration"]) >= patience * run.tcfg["val_every"]


def _best_text(run: _Run) -> str:
    """The best score so far, as it was ranked."""
    if run.tcfg["select"] == "components":
        return f"AP@0.5 {run.best['ap']:.3f}"
    return f"mean AP {run.best.get('mean_ap') or 0.0:.3f}"


def _final_validation(run: _Run) -> None:
    """Validate the last weights, into the last history row if it is for this iteration."""
    iteration = run.iteration
    scores = _validate(run)
    row = {"iteration": iteration, "loss": None, "lr": run.schedule.last_lr,
           "seconds": round(run.elapsed, 2), "val_ap": round(scores["ap"], 6),
           "val_mean_ap": round(scores["mean_ap"], 6), "val_iou": round(scores["iou"], 6),
           "val_tp": scores["tp"], "val_fp": scores["fp"], "val_fn": scores["fn"]}
    history = run.history
    if history and history[-1]["iteration"] == iteration:
        history[-1].update({k: v for k, v in row.items() if k != "loss"})
    else:
        history.append(row)
    log.info("train: final validation at iteration %d: AP@0.5 %.3f, mean AP %.3f (best %s "
             "at %d)", iteration, scores["ap"], scores["mean_ap"], _best_text(run),
             run.best["iteration"])


# --- saving -------------------------------------------------------------------------


def _finish(run: _Run, *, finished: bool) -> None:
    """Close the history, validate the last weights and write the run's files.

    A run that ``finished`` (not one cut short by ``stop_at``) also gets its
    final validation, a best checkpoint when there is nothing to validate on,
    and ``training_curves.png``.
    """
    history = run.history
    if finished and run.loss_n:  # the last, shorter interval of a run stopped by the clock
        history.append({"iteration": run.iteration,
                        "loss": round(run.loss_sum / run.loss_n, 6),
                        "lr": run.schedule.last_lr, "seconds": round(run.elapsed, 2)})
        run.loss_sum, run.loss_n = 0.0, 0
    if finished and run.val_images and (not history or history[-1].get("val_ap") is None
                                        or history[-1]["iteration"] != run.iteration):
        _final_validation(run)
    if finished and not run.val_images:
        run.best = {"iteration": run.iteration, "ap": None, "iou": None,
                    "state_dict": _state_dict_cpu(run.model)}
        _keep_best(run)
    if finished and run.best_path.is_file():
        _store_effective_halo(run)
    _save_last(run, finished=finished)
    write_history(history, run.out_dir / "history.csv")
    if finished:
        plot_history(history, run.out_dir / "training_curves.png", select=run.tcfg["select"])


def _store_effective_halo(run: _Run) -> None:
    """Measure the best model's halo for ``predict.halo: auto`` on the centre of the
    first validation image (else the first training image) and store it in
    ``checkpoint_best.pt`` (:func:`unetpipe.nn.tiles.effective_halo`)."""
    from ..nn.checkpoint import EFFECTIVE_HALO, build_model, read_checkpoint
    from ..nn.tiles import effective_halo, probe_region

    ckpt = read_checkpoint(run.best_path)
    if ckpt["model"]["config"].get("padding", "same") != "same":
        return  # a valid-padding model sets its own context
    if run.val_images:
        name, image = run.val_images[0].name, run.val_images[0].image
    else:
        name, image = run.samples[0].name, run.samples[0].image
    region = probe_region(image.shape[1:], len(image.shape) - 1)
    crop = np.asarray(image[(slice(None), *region)], dtype=np.float32)
    t0 = time.perf_counter()
    found = effective_halo(build_model(ckpt).to(run.device), crop, device=run.device)
    ckpt[EFFECTIVE_HALO] = {**found, "measured_on": name}
    save_checkpoint(ckpt, run.best_path)
    log.info("train: measured halo %s (exact %s): largest change %.2g <= %g against "
             "whole-image prediction on the centre of %s (%s), in %.1f s; stored in %s",
             found["halo"], found["exact"], found["deviation"], found["tolerance"], name,
             "x".join(map(str, found["shape"])), time.perf_counter() - t0, run.best_path)


def _state_dict_cpu(module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _describe(run: _Run) -> dict:
    """The checkpoint fields that describe the run rather than its weights."""
    import torch

    return {
        "format": FORMAT, "version": VERSION, "unetpipe_version": __version__,
        "torch_version": str(torch.__version__),  # a str subclass that would need pickle
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "normalization": plain(run.normalization), "targets": plain(run.targets_info),
        "data": plain(run.data_info), "fingerprint": run.fingerprint,
        # the settings that shaped this model: the training sections as
        # given, targets and normalisation as found in the stores
        "config": plain({"model": run.mcfg, "train": run.tcfg, "augment": run.acfg,
                         "targets": run.targets_info, "preprocess": run.normalization}),
    }


def _keep_best(run: _Run) -> None:
    """Write ``run.best`` to ``checkpoint_best.pt``."""
    _save_best(run.best_path, run.best, _describe(run) | {"model_config": run.model_config})


def _save_last(run: _Run, *, finished: bool) -> None:
    """Write ``checkpoint_last.pt``: everything a resumed run needs."""
    import torch

    payload = _describe(run)
    payload.update({
        "model": {"class": "UNet", "config": plain(run.model_config),
                  "state_dict": _state_dict_cpu(run.model)},
        "iteration": run.iteration, "elapsed": run.elapsed, "finished": finished,
        "stopped_by": run.stopped_by if finished else None,
        "optimizer": run.optimizer.state_dict(), "scheduler": run.schedule.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if run.cuda else []},
        "history": plain(run.history), "best": run.best,
        "pending_loss": [run.loss_sum, run.loss_n],
    })
    save_checkpoint(payload, run.last_path)


def _store_attrs(store_path: str) -> dict:
    import zarr

    try:
        return dict(zarr.open_group(store_path, mode="r").attrs.get("unetpipe", {}))
    except Exception:  # attributes are descriptive only
        return {}


def _save_best(path: Path, best: dict, describe: dict) -> None:
    model_config = describe.pop("model_config", None)
    payload = dict(describe)
    payload.update({"iteration": best["iteration"], "val_ap": best["ap"],
                    "val_mean_ap": best.get("mean_ap"), "val_select": best.get("select"),
                    "val_iou": best.get("iou"), "finished": True,
                    "model": {"class": "UNet", "config": plain(model_config),
                              "state_dict": best["state_dict"]}})
    save_checkpoint(payload, path)
