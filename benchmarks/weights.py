"""Speed of the separation weight map, as ratios measured in the same run.

(a) 2048 x 2048 synthetic nuclei mask (>= 1500 cells): time of
    ``separation_weight_map`` / time of one ``scipy.ndimage.distance_transform_edt``
    over the same image. Target: <= 10.
(b) 1024 x 1024 mask: brute force (one exact distance transform of the whole
    image per cell, the definition) / ``separation_weight_map``. Target: >= 30.
(c) 64 x 512 x 512 mask with anisotropic spacing (2.0, 0.5, 0.5): the ratio as
    in (a), for sigma = 2.5 and 5 (physical units), reported.

Times are medians of ``--repeat`` runs (the brute force runs once). The
weight map uses its default threads (one per core); the single-thread ratio
is printed too.

Usage::

    python benchmarks/weights.py [--repeat 3] [--skip-brute]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from scipy import ndimage as ndi

from unetpipe.inputs.synth import random_nuclei_labels
from unetpipe.stages.weights import separation_targets, separation_weight_map


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def brute_force(labels, *, w0=10.0, sigma=5.0, spacing=None):
    """The definition: one distance transform of the whole image per cell."""
    targets = separation_targets(labels)
    cells = np.where(targets == 1, labels, 0)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i in np.unique(cells)[1:]:
        d = ndi.distance_transform_edt(cells != i, sampling=spacing)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    counts = np.bincount(targets.ravel(), minlength=2)
    wc = labels.size / (2 * counts) if np.all(counts) else np.ones(2)
    border = np.where((targets == 0) & np.isfinite(d2),
                      w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), 0.0)
    return (wc[targets] + border).astype(np.float32)


def versus_edt(labels, *, spacing=None, sigma=5.0, repeat=3):
    t_edt, _ = timed(lambda: ndi.distance_transform_edt(labels == 0, sampling=spacing), repeat)
    t_fast, _ = timed(lambda: separation_weight_map(labels, spacing=spacing, sigma=sigma), repeat)
    t_one, _ = timed(lambda: separation_weight_map(labels, spacing=spacing, sigma=sigma,
                                                   threads=1), repeat)
    return t_edt, t_fast, t_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-brute", action="store_true", help="Skip (b), the slow one.")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}")

    labels = random_nuclei_labels((2048, 2048), rng=0)
    n = int(labels.max())
    assert n >= 1500, n
    t_edt, t_fast, t_one = versus_edt(labels, repeat=args.repeat)
    print(f"(a) 2048 x 2048, {n} cells: weight map {t_fast:.2f} s, one EDT {t_edt:.2f} s, "
          f"ratio {t_fast / t_edt:.2f} (single thread {t_one / t_edt:.2f}); "
          f"{'PASS' if t_fast / t_edt <= 10 else 'FAIL'} (<= 10)")

    if not args.skip_brute:
        labels = random_nuclei_labels((1024, 1024), rng=1)
        n = int(labels.max())
        t_fast, fast = timed(lambda: separation_weight_map(labels), args.repeat)
        t_brute, brute = timed(lambda: brute_force(labels), 1)
        err = float(np.abs(fast.astype(np.float64) - brute).max())
        print(f"(b) 1024 x 1024, {n} cells: brute force {t_brute:.1f} s, weight map "
              f"{t_fast:.2f} s, ratio {t_brute / t_fast:.0f}; max |difference| {err:.2g} "
              f"(allowed 1e-2); {'PASS' if t_brute / t_fast >= 30 else 'FAIL'} (>= 30)")

    spacing = (2.0, 0.5, 0.5)
    labels = random_nuclei_labels((64, 512, 512), spacing=spacing, rng=2)
    n = int(labels.max())
    for sigma in (2.5, 5.0):
        t_edt, t_fast, t_one = versus_edt(labels, spacing=spacing, sigma=sigma,
                                          repeat=max(1, args.repeat - 2))
        print(f"(c) 64 x 512 x 512, spacing {spacing}, {n} cells, sigma {sigma}: weight map "
              f"{t_fast:.1f} s, one EDT {t_edt:.1f} s, ratio {t_fast / t_edt:.2f} "
              f"(single thread {t_one / t_edt:.2f})")


if __name__ == "__main__":
    main()
