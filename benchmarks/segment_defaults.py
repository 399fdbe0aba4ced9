"""Which segmentation settings score best on the demo: the source of the defaults.

Runs :func:`unetpipe.stages.instances.segment_array` with a grid of settings on the
probabilities of the demo's prediction image (after ``snakemake --cores 2``)
and scores each against the demo's ground truth: AP at IoU 0.5 and mean AP
over IoU 0.50:0.95 (see README, "Evaluation metrics"). Prints the table,
best mean AP last.

Usage::

    python benchmarks/segment_defaults.py [--results results] [--sample predict_000]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path


def main() -> None:
    import zarr

    from unetpipe.io.images import read_labels
    from unetpipe.stages.instances import SegmentParams, segment_array
    from unetpipe.stages.metrics import score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--sample", default="predict_000")
    args = parser.parse_args()
    res = Path(args.results)
    probs = zarr.open_array(str(res / "probabilities" / f"{args.sample}.ome.zarr" / "0"))[:]
    truth = read_labels(res / "preprocessed" / f"{args.sample}.ome.zarr" / "labels" / "gt")
    truth = truth.data.compute()
    grid = [SegmentParams(method=m, threshold=t, foreground=f, min_size=s)
            for m, t, f, s in itertools.product(["components", "watershed"], [0.5, 0.6],
                                                [0.3, 0.4, 0.5], [0, 20])]
    grid += [SegmentParams(method="watershed", seeds="distance", h=h, foreground=0.5,
                           min_size=20) for h in (1.0, 2.0)]
    rows = []
    for params in grid:
        s = score(truth, segment_array(probs, params=params))
        rows.append((s.mean_ap, s.ap(0.5), params))
    print(f"{args.sample}: {int(truth.max())} true objects")
    print("mean AP  AP@0.5  method      seeds     threshold  foreground  min_size  h")
    for mean_ap, ap50, p in sorted(rows, key=lambda r: r[0]):
        print(f"{mean_ap:7.4f}  {ap50:6.4f}  {p.method:10s}  {p.seeds:8s}  {p.threshold:9.2f}  "
              f"{p.foreground:10.2f}  {p.min_size:8g}  {p.h:g}")


if __name__ == "__main__":
    main()
