"""Chunked segmentation at scale: its cost against the whole image, and its memory.

(a) Time. A 4096 x 4096 three-class probability map (synthetic nuclei, their
    training targets blurred and made noisy, as a network gives them) is
    stored as OME-Zarr in 512 x 512 chunks, as ``unetpipe predict`` writes
    it. The whole-image version reads it into memory, runs
    :func:`unetpipe.stages.instances.segment_array` and writes the labels to a Zarr
    store; the chunked version runs :func:`unetpipe.stages.segment.segment_store`
    (blocks, halos, stitching, the relabelling pass) on the same store, with
    one thread and with two. Alternating rounds; medians. Target: chunked /
    whole <= 1.3.

(b) Memory. A 3D probability stack of at least 4 GB (float32, three
    classes) is built by tiling a synthetic probability volume, and
    ``unetpipe segment`` runs on it in its own process exactly as the
    workflow's rule runs it; the process's peak resident memory
    (``ru_maxrss`` from ``wait4``) is read. A stack 4 times smaller (half in
    y and x, the same depth, so the same window shapes) is run the same way
    for comparison. Target: <= 1.5 GB.

Usage::

    python benchmarks/segment_scale.py [--part a|b|both] [--rounds 3]
        [--shape3d 128 1664 1664]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("UNETPIPE_BENCH_CACHE", "/tmp/unetpipe-bench"))


def probabilities_from_labels(labels, *, sigma=1.0, noise=0.1, seed=0):
    from scipy import ndimage as ndi

    from unetpipe.stages.weights import targets_for_mode

    targets = targets_for_mode(labels, "three_class")
    rng = np.random.default_rng(seed)
    p = np.stack([ndi.gaussian_filter((targets == c).astype(np.float32), sigma)
                  for c in range(3)])
    p += rng.uniform(0, noise, p.shape).astype(np.float32)
    p /= p.sum(0, keepdims=True)
    return p


def create_store(path: Path, shape, chunks, spacing=None):
    import zarr

    from unetpipe.io.images import set_multiscale_metadata

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = root.create_array("0", shape=shape, chunks=chunks, dtype=np.float32, fill_value=0)
    spatial = "zyx"[-(len(shape) - 1):]
    set_multiscale_metadata(root, axes="c" + spatial, unit="micrometer" if spacing else None,
                            scales=[[1.0, *(spacing or [1.0] * (len(shape) - 1))]],
                            name="probabilities")
    root.attrs["unetpipe"] = {"stage": "predict",
                              "classes": ["background", "interior", "boundary"]}
    return arr


def map_2d(size: int) -> Path:
    path = CACHE / f"probabilities_{size}.ome.zarr"
    if (path / "zarr.json").exists():
        return path
    from unetpipe.inputs.synth import synthetic_nuclei

    print(f"writing a {size} x {size} probability map to {path} ...", flush=True)
    _, labels = synthetic_nuclei((size, size), seed=11)
    p = probabilities_from_labels(labels)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    create_store(tmp, p.shape, (3, 512, 512))[...] = p
    os.replace(tmp, path)
    return path


def part_a(rounds: int) -> None:
    import zarr

    from unetpipe.core.cluster import Execution
    from unetpipe.stages.instances import SegmentParams, default_halo, segment_array
    from unetpipe.stages.segment import segment_store

    src = map_2d(4096)
    out = CACHE / "labels_a"
    for params in (SegmentParams(), SegmentParams(method="components")):

        def whole(params=params):
            t = time.perf_counter()
            p = zarr.open_array(str(src / "0"))[:]
            labels = segment_array(p, params=params)
            del p
            shutil.rmtree(out, ignore_errors=True)
            zarr.open_group(str(out), mode="w").create_array(
                "0", data=labels, chunks=(1024, 1024))
            return time.perf_counter() - t, int(labels.max())

        def chunked(threads, params=params):
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            r = segment_store(src, out, params=params,
                              execution=Execution(threads=threads, progress=False))
            return time.perf_counter() - t, r.objects

        times = {"whole image": [], "chunked, 1 thread": [], "chunked, 2 threads": []}
        objects = {}
        for _ in range(rounds):
            for name, run in (("whole image", whole),
                              ("chunked, 1 thread", lambda: chunked(1)),
                              ("chunked, 2 threads", lambda: chunked(2))):
                seconds, n = run()
                times[name].append(seconds)
                objects[name] = n
        shutil.rmtree(out, ignore_errors=True)
        base = statistics.median(times["whole image"])
        print(f"(a) 4096 x 4096, {params.method} ({params.seeds} seeds), block 1024 x 1024, "
              f"halo {default_halo(params, 2)[0]}; Zarr in, Zarr out; {rounds} rounds, medians")
        for name, values in times.items():
            print(f"    {name:18s} {statistics.median(values):7.2f} s   objects {objects[name]}"
                  f"   ratio to the whole image {statistics.median(values) / base:.2f}")


def stack_3d(shape) -> Path:
    """A probability stack tiling one synthetic probability volume (cached)."""
    path = CACHE / f"probabilities_{'x'.join(map(str, shape))}.ome.zarr"
    if (path / "zarr.json").exists():
        return path
    from unetpipe.inputs.synth import synthetic_nuclei

    tile = (min(64, shape[0]), min(256, shape[1]), min(256, shape[2]))
    print(f"writing a {'x'.join(map(str, shape))} probability stack "
          f"({3 * math.prod(shape) * 4 / 1e9:.2f} GB) to {path} ...", flush=True)
    _, labels = synthetic_nuclei(tile, seed=5)
    p = probabilities_from_labels(labels)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    arr = create_store(tmp, (3, *shape), (3, *tile))
    grid = [range(0, s, t) for s, t in zip(shape, tile, strict=True)]
    for z in grid[0]:
        for y in grid[1]:
            for x in grid[2]:
                box = tuple(slice(o, min(o + t, s)) for o, t, s in
                            zip((z, y, x), tile, shape, strict=True))
                arr[(slice(None), *box)] = p[(slice(None), *tuple(slice(0, b.stop - b.start) for b in box))]
    os.replace(tmp, path)
    return path


def peak_rss(command) -> tuple[float, float]:
    """Run a command; its (seconds, peak RSS in bytes)."""
    t = time.perf_counter()
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}")
    return seconds, usage.ru_maxrss * 1024


def part_b(shape) -> None:
    results = []
    # the smaller stack keeps the depth, so that its windows have the same
    # shape (a stack one block deep has windows without a z halo)
    for s in (tuple(shape), (shape[0], max(1, shape[1] // 2), max(1, shape[2] // 2))):
        src = stack_3d(s)
        out = CACHE / "labels_b.ome.zarr"
        table = CACHE / "labels_b.csv"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "unetpipe", "-q", "segment", str(src), str(out),
               "--table", str(table), "--threads", "2"]
        seconds, rss = peak_rss(cmd)
        import zarr

        n = zarr.open_group(str(out)).attrs["unetpipe"]["objects"]
        gb = 3 * math.prod(s) * 4 / 1e9
        results.append((s, gb, seconds, rss, n))
        shutil.rmtree(out, ignore_errors=True)
    print("(b) unetpipe segment --table, default settings (watershed, block 64 x 192 x 192, "
          "halo 32), 2 threads")
    for s, gb, seconds, rss, n in results:
        print(f"    stack {'x'.join(map(str, s)):>14s} ({gb:5.2f} GB float32): {seconds:7.1f} s, "
              f"{n} objects, {math.prod(s) / seconds / 1e6:.2f} Mvoxel/s, "
              f"peak RSS {rss / 1e9:.3f} GB")
    print(f"    peak RSS ratio big / small: {results[0][3] / results[1][3]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape3d", type=int, nargs=3, default=[128, 1664, 1664])
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.part in ("a", "both"):
        part_a(args.rounds)
    if args.part in ("b", "both"):
        part_b(args.shape3d)


if __name__ == "__main__":
    main()
