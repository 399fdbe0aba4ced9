"""The demo's training data, built in a folder for the training benchmarks.

Writes the demo TIFFs (:func:`unetpipe.inputs.demo.write_demo` with the config's
demo defaults), preprocesses them and computes their targets, exactly as the
workflow does, and returns the stores. Targets are cached per ``(mode, w0)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from unetpipe.core.config import defaults
from unetpipe.inputs.demo import demo_manifest, write_demo
from unetpipe.stages.preprocess import preprocess_file
from unetpipe.stages.targets import write_targets


def demo_training_data(folder: str | os.PathLike, *, mode: str = "two_class", w0: float = 10.0,
                       sigma: float = 5.0) -> tuple[list[tuple[str, str]], list[str]]:
    """Return ``([(preprocessed, targets) per training image], [validation stores])``."""
    cfg = defaults()
    demo, pre = cfg["demo"], cfg["preprocess"]
    folder = Path(folder)
    raw = folder / "demo"
    items = demo_manifest(n_train=demo["n_train"], n_val=demo["n_val"], n_predict=0)
    if not all((raw / item.image).exists() for item in items):
        write_demo(raw, ndim=demo["ndim"], seed=demo["seed"], n_train=demo["n_train"],
                   n_val=demo["n_val"], n_predict=0, train_shape=demo["train_shape"],
                   spacing=demo["spacing"], progress=False)
    train, val = [], []
    for item in items:
        store = folder / "preprocessed" / f"{item.name}.ome.zarr"
        if not store.exists():
            preprocess_file(raw / item.image, store, labels_path=raw / item.labels,
                            percentiles=pre["percentiles"], clip=pre["clip"],
                            sample_size=pre["sample_size"], chunks=pre["chunks"],
                            pyramid_levels=pre["pyramid_levels"], progress=False)
        if item.role == "val":
            val.append(str(store))
            continue
        targets = folder / f"targets-{mode}-w0_{w0:g}" / f"{item.name}.zarr"
        if not targets.exists():
            write_targets(store, targets, mode=mode, w0=w0, sigma=sigma, progress=False)
        train.append((str(store), str(targets)))
    return train, val
