"""The weight-map figure of the README, after the U-Net paper's Fig. 3.

Panels: (a) a crop of the demo's first training image, (b) its ground-truth
instance labels, (c) the training targets (cells white, with the separation
gaps between touching cells black), (d) the weight map (class balance plus
the border term that weights the gaps), with the default settings.

Usage::

    python docs/figures/weightmap_figure.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage.segmentation import find_boundaries

from unetpipe.core.config import defaults
from unetpipe.inputs.demo import demo_image, demo_manifest
from unetpipe.inputs.synth import touching_pairs
from unetpipe.stages.weights import separation_targets, separation_weight_map

CROP = 128


def best_crop(labels: np.ndarray, size: int) -> tuple[slice, slice]:
    """The crop with the most touching pairs (on a 32-pixel grid)."""
    best, where = -1, (0, 0)
    for y in range(0, labels.shape[0] - size + 1, 32):
        for x in range(0, labels.shape[1] - size + 1, 32):
            n = len(touching_pairs(labels[y:y + size, x:x + size]))
            if n > best:
                best, where = n, (y, x)
    return slice(where[0], where[0] + size), slice(where[1], where[1] + size)


def main(out: str) -> None:
    cfg = defaults()
    demo, targets_cfg = cfg["demo"], cfg["targets"]
    item = demo_manifest(n_train=1, n_val=0, n_predict=0)[0]
    image, labels = demo_image(item, seed=demo["seed"], train_shape=demo["train_shape"])
    # the weight map of the whole image, cropped afterwards, as training sees it
    targets = separation_targets(labels)
    weights = separation_weight_map(labels, w0=targets_cfg["w0"], sigma=targets_cfg["sigma"])
    crop = best_crop(labels, CROP)
    image, labels, targets, weights = image[crop], labels[crop], targets[crop], weights[crop]

    rng = np.random.default_rng(0)
    colours = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    colours[0] = 0
    lo, hi = np.percentile(image, [1, 99.8])
    gray = np.clip((image - lo) / (hi - lo), 0, 1)
    overlay = np.where(labels[..., None] > 0, 0.35 * gray[..., None] + 0.65 * colours[labels],
                       gray[..., None])
    overlay[find_boundaries(labels, mode="inner")] = 1.0

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    panels = [(gray, "gray", "(a) image"), (overlay, None, "(b) ground truth"),
              (targets, "gray", "(c) targets: gaps separate touching cells"),
              (weights, "jet", f"(d) weight map, w0 = {targets_cfg['w0']:g}, "
                               f"sigma = {targets_cfg['sigma']:g} px")]
    for ax, (data, cmap, title) in zip(axes, panels, strict=True):
        shown = ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.02)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}: crop {crop[0].start}:{crop[0].stop}, {crop[1].start}:{crop[1].stop} "
          f"of {item.name}, {len(touching_pairs(labels))} touching pairs, weights "
          f"{weights.min():.2f} to {weights.max():.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("weightmap.png")))
