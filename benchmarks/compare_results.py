"""Compare two results folders of the workflow, array by array and file by file.

Used to show that a change of the code changes no output: run the same
workflow (same config, ``train.deterministic: true``) before and after the
change into two folders, then::

    python benchmarks/compare_results.py RUN_A RUN_B

Every Zarr array under ``results/{preprocessed,targets,probabilities,labels}``
is compared with ``numpy.array_equal`` (dtype and shape too), every CSV and
JSON under ``results/{tables,metrics}`` byte for byte once the run folder's
own path is replaced (the metrics record their input paths), and the trained
weights of ``results/model/checkpoint_best.pt`` with ``torch.equal``. Prints
one line per item and ``N compared, M different``; exits 1 when any differ.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import zarr


def compare(a: Path, b: Path) -> int:
    ra, rb = a / "results", b / "results"
    n = bad = 0
    for sub in ("preprocessed", "targets", "probabilities", "labels", "tables", "metrics"):
        for pa in sorted((ra / sub).rglob("*")):
            rel = pa.relative_to(ra)
            pb = rb / rel
            if pa.is_dir() and (pa / "zarr.json").exists():
                x = zarr.open(str(pa), mode="r")
                if not isinstance(x, zarr.Array):
                    continue
                y = zarr.open(str(pb), mode="r") if (pb / "zarr.json").exists() else None
                same = (isinstance(y, zarr.Array) and x.dtype == y.dtype
                        and x.shape == y.shape and np.array_equal(x[...], y[...], equal_nan=True))
            elif pa.is_file() and pa.suffix in (".csv", ".json") and pa.name != "zarr.json":
                same = pb.is_file() and (pa.read_bytes().replace(str(a).encode(), b"RUN")
                                         == pb.read_bytes().replace(str(b).encode(), b"RUN"))
            else:
                continue
            n += 1
            bad += not same
            print(f"{rel}: {'identical' if same else 'DIFFERENT'}")
    ca, cb = ra / "model" / "checkpoint_best.pt", rb / "model" / "checkpoint_best.pt"
    if ca.is_file():
        import torch

        sa = torch.load(ca, weights_only=True)["model"]["state_dict"]
        sb = torch.load(cb, weights_only=True)["model"]["state_dict"] if cb.is_file() else {}
        same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        n += 1
        bad += not same
        print(f"model/checkpoint_best.pt weights ({len(sa)} tensors): "
              f"{'identical' if same else 'DIFFERENT'}")
    print(f"{n} compared, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path, help="Folder holding results/ of the first run.")
    parser.add_argument("run_b", type=Path, help="Folder holding results/ of the second run.")
    args = parser.parse_args()
    sys.exit(compare(args.run_a, args.run_b))
