"""A big stack through the pipeline: preprocess, predict and segment on this machine.

Writes a synthetic 3D stack of nuclei of at least ``--gb`` GB (default 8.0)
on disk, an uncompressed float32 OME-Zarr (one array, chunks of 64 x 256 x
256, spacing 1.0 x 0.5 x 0.5 um; 256 x 2816 x 2816 = 8.12 GB for 8 GB),
chunk by chunk in two processes, so that the whole stack is never in
memory. Then it runs the three stages exactly
as the workflow's rules run them, each as the real command line in its own
child process, with Dask's threaded scheduler and ``--threads 2``:

* ``unetpipe preprocess RAW PRE``;
* ``unetpipe predict MODEL PRE PROBS --dtype float16`` with a small 3D
  U-Net (depth 1, 4 features, three classes) trained for 3 minutes on
  three 48 x 256 x 256 stacks made by the same generator (patches of 16 x
  64 x 64, no elastic deformation, so that a 2-core CPU gets through ~100
  iterations; validation AP at IoU 0.5 about 0.6: a weak but real model,
  so segment sees realistic probabilities). Cached in
  ``/tmp/unetpipe-bench``; ``--stages model`` only trains it;
* ``unetpipe segment PROBS LABELS --table CSV --image PRE`` (default
  settings: watershed from the classes).

``--predict-block`` and ``--segment-block`` pass ``--block`` to the two
commands (larger blocks spend less on halos and take more memory); by
default the commands' own defaults are used.

For each stage it prints the wall time, the input voxels per second, the
child's peak resident memory (``ru_maxrss`` from ``wait4`` of that child
alone) and its ratio to the input's size, and the output's size on disk
(``du``: allocated blocks).

The nuclei are ellipsoids on a jittered grid in physical space, one
possible nucleus per grid cell with its parameters drawn once from a seeded
generator, so every chunk rasterises the same objects where chunks meet;
overlapping neighbours split their overlap by normalised distance, so some
nuclei touch. The image is the objects' brightness with a texture and an
uneven illumination, blurred (each chunk rendered with a margin, so the blur
has no seams), with shot-like and read noise.

Disk: the raw stack is deleted once preprocessed; the preprocessed store
once segmented (``--keep`` keeps it and the outputs). The free space is
checked first. Work goes to ``--workdir`` (default
``/tmp/unetpipe-bench/big``); the model is cached in ``/tmp/unetpipe-bench``.

Usage::

    python benchmarks/big_stack.py [--gb 8.0] [--quick] [--keep] [--workdir DIR]
        [--stages model generate preprocess predict segment]
        [--predict-block Z Y X] [--segment-block Z Y X]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("UNETPIPE_BENCH_CACHE", "/tmp/unetpipe-bench"))
STAGES = ("model", "generate", "preprocess", "predict", "segment")
SPACING = (1.0, 0.5, 0.5)  # um, z y x
CHUNKS = (64, 256, 256)  # of the raw stack (16 MiB of float32), as preprocess writes
DEPTH = 256  # planes of the stack; y and x grow with --gb
CELL_UM = 9.0  # grid cell of the nuclei
RADIUS_UM = (2.8, 4.2)
BLUR_UM = 0.8  # sigma of the blur
TRAIN_PATCH = (16, 64, 64)  # small patches: many iterations in a few minutes on a CPU
RESERVE = 2e9  # bytes left free for everyone else


# --- the synthetic nuclei ----------------------------------------------------------


class NucleiField:
    """Nuclei on a jittered grid over a stack of ``shape``; deterministic per seed.

    One candidate nucleus per grid cell (85% present), its centre, radii and
    brightness drawn once for the whole stack (a few bytes per nucleus), so
    any region can be rendered alone and agrees with its neighbours.
    """

    def __init__(self, shape, *, spacing=SPACING, seed=0):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.cell = CELL_UM / self.spacing  # pixels per grid cell, per axis
        self.grid = tuple(math.ceil(s / c) for s, c in zip(self.shape, self.cell,
                                                                strict=True))
        rng = np.random.default_rng(seed)
        n = math.prod(self.grid)
        index = np.stack(np.unravel_index(np.arange(n), self.grid), axis=1)
        jitter = rng.uniform(-0.2, 0.2, (n, 3))
        self.centres = ((index + 0.5 + jitter) * self.cell).astype(np.float32)
        radius = rng.uniform(*RADIUS_UM, (n, 1)) * rng.uniform(0.85, 1.15, (n, 3))
        self.radii = (radius / self.spacing).astype(np.float32)  # pixels
        self.brightness = rng.uniform(0.45, 1.0, n).astype(np.float32)
        self.present = rng.uniform(size=n) < 0.85
        self.sigma = BLUR_UM / self.spacing
        self.margin = np.ceil(3 * self.sigma).astype(int)
        self.reach = float(self.radii.max()) + 1

    def _objects(self, lo, hi):
        """Flat indices of the nuclei that may reach into the box [lo, hi)."""
        ranges = []
        for a in range(3):
            c = self.cell[a]
            first = max(0, math.floor((lo[a] - self.reach) / c) - 1)
            last = min(self.grid[a], math.ceil((hi[a] + self.reach) / c) + 1)
            ranges.append(np.arange(first, last))
        cells = np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), self.grid).ravel()
        return cells[self.present[cells]]

    def render(self, lo, hi, *, seed=0, labels=False):
        """The image (float32) of the box [lo, hi), and its labels when asked."""
        lo = np.asarray(lo)
        hi = np.asarray(hi)
        wlo = np.maximum(lo - self.margin, 0)
        whi = np.minimum(hi + self.margin, self.shape)
        wshape = tuple(whi - wlo)
        value = np.zeros(wshape, np.float32)
        best = np.full(wshape, np.inf, np.float32)
        lab = np.zeros(wshape, np.uint32) if labels else None
        for i in self._objects(wlo, whi):
            c, r = self.centres[i], self.radii[i]
            a = np.maximum(np.floor(c - r).astype(int), wlo)
            b = np.minimum(np.ceil(c + r).astype(int) + 1, whi)
            if np.any(b <= a):
                continue
            z, y, x = (((np.arange(a[k], b[k], dtype=np.float32) - c[k]) / r[k]) ** 2
                       for k in range(3))
            d = z[:, None, None] + y[None, :, None] + x[None, None, :]
            box = tuple(slice(a[k] - wlo[k], b[k] - wlo[k]) for k in range(3))
            mine = (d < 1) & (d < best[box])
            best[box][mine] = d[mine]
            # dimmer towards the rim, as stained nuclei look
            value[box][mine] = self.brightness[i] * (0.65 + 0.35 * np.sqrt(1 - d[mine]))
            if labels:
                lab[box][mine] = i + 1
        del best
        z, y, x = (np.arange(wlo[k], whi[k], dtype=np.float32) * self.spacing[k]
                   for k in range(3))
        z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
        texture = 1 + 0.08 * (np.sin(2.1 * z + 1.3 * y) + np.sin(1.7 * y - 0.9 * x)
                              + np.sin(2.3 * x + 0.7 * z))
        value *= texture
        del texture
        from scipy import ndimage as ndi

        value = ndi.gaussian_filter(value, self.sigma, mode="reflect", truncate=3.0)
        illumination = 0.8 + 0.2 * np.sin(y / 350.0) * np.cos(x / 450.0)
        crop = tuple(slice(lo[k] - wlo[k], hi[k] - wlo[k]) for k in range(3))
        image = 100 + 1000 * value[crop] * illumination[:, crop[1], crop[2]]
        rng = np.random.default_rng([seed, *map(int, lo)])
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        image += noise * (1.2 * np.sqrt(image) + 4)
        np.maximum(image, 0, out=image)
        return image.astype(np.float32), (lab[crop] if labels else None)


def stack_shape(gb: float) -> tuple[int, int, int]:
    """256 planes, square planes, float32 >= gb * 1e9 bytes; whole chunks only, so
    that what is on disk is the stack (Zarr stores edge chunks whole)."""
    depth = DEPTH
    side = math.ceil(math.sqrt(gb * 1e9 / 4 / depth) / CHUNKS[1]) * CHUNKS[1]
    return depth, side, side


_FIELD: NucleiField | None = None


def _write_chunk(args) -> None:
    path, lo, hi = args
    import zarr

    arr = zarr.open_array(path, mode="r+")
    image, _ = _FIELD.render(lo, hi, seed=1)
    arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = image


def generate(path: Path, shape, *, processes: int = 2) -> float:
    """Write the stack as an uncompressed OME-Zarr, chunk by chunk; seconds taken."""
    global _FIELD
    import zarr

    from unetpipe.io.images import set_multiscale_metadata

    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    root.create_array("0", shape=shape, chunks=CHUNKS, dtype=np.float32, fill_value=0,
                      compressors=None, dimension_names=list("zyx"))
    set_multiscale_metadata(root, axes="zyx", unit="micrometer", scales=[list(SPACING)],
                            name="nuclei")
    _FIELD = NucleiField(shape, seed=0)
    jobs = []
    for z in range(0, shape[0], CHUNKS[0]):
        for y in range(0, shape[1], CHUNKS[1]):
            for x in range(0, shape[2], CHUNKS[2]):
                lo = (z, y, x)
                hi = tuple(min(o + c, s) for o, c, s in zip(lo, CHUNKS, shape, strict=True))
                jobs.append((str(tmp / "0"), lo, hi))
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for n, _ in enumerate(pool.imap_unordered(_write_chunk, jobs), 1):
            if n % max(1, len(jobs) // 10) == 0 or n == len(jobs):
                print(f"  generate: {n}/{len(jobs)} chunks, {time.perf_counter() - t0:.0f} s",
                      flush=True)
    _FIELD = None
    os.replace(tmp, path)
    return time.perf_counter() - t0


# --- the stages as child processes ----------------------------------------------------


def run(cmd, log: Path) -> tuple[float, int]:
    """Run ``cmd`` as a child process; (seconds, peak RSS in bytes of that child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text().splitlines()[-15:] if log.exists() else []
        sys.exit("failed: " + " ".join(map(str, cmd)) + "\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss * 1024


def unetpipe(log: Path, *args):
    return [sys.executable, "-m", "unetpipe", "-q", "--log", str(log), *args]


# --- the small model -----------------------------------------------------------------


def small_model(*, depth: int, features: int, minutes: float, lr: float) -> Path:
    """A small 3D U-Net trained briefly on stacks from the same generator (cached)."""
    from unetpipe.io.images import write_tiff

    folder = CACHE / f"big-stack-model-d{depth}-f{features}-m{minutes:g}-lr{lr:g}-p16"
    ckpt = folder / "model" / "checkpoint_best.pt"
    if ckpt.exists():
        return ckpt
    print(f"training a small model (depth {depth}, {features} features, {minutes:g} min) "
          f"in {folder} ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log = folder / "log"
    log.mkdir()
    shape = (48, 256, 256)
    stores = []
    for k in range(4):
        image, labels = NucleiField(shape, seed=100 + k).render((0, 0, 0), shape, seed=k,
                                                                labels=True)
        _, labels = np.unique(labels, return_inverse=True)
        tif = write_tiff(folder / f"img{k}.tif", image, axes="zyx", spacing=SPACING)
        lab = write_tiff(folder / f"lab{k}.tif", labels.reshape(shape).astype(np.uint16),
                         axes="zyx", spacing=SPACING)
        pre = folder / f"pre{k}.ome.zarr"
        run(unetpipe(log / f"pre{k}.log", "preprocess", tif, pre, "--labels", lab,
                     "--threads", 2), log / f"pre{k}.log")
        stores.append(pre)
    targets = []
    for k, pre in enumerate(stores[:3]):
        tgt = folder / f"targets{k}.zarr"
        # sigma in micrometres, as the 3D demo's config sets it: 5 pixels in y and x
        run(unetpipe(log / f"tgt{k}.log", "targets", pre, tgt, "--sigma", 2.5,
                     "--threads", 2), log / f"tgt{k}.log")
        targets.append(tgt)
    seconds, _ = run(unetpipe(log / "train.log", "train", folder / "model",
                              "--train-images", *stores[:3], "--train-targets", *targets,
                              "--val-images", stores[3], "--depth", depth,
                              "--features", features, "--minutes", minutes,
                              "--iterations", 100000, "--val-every", 50, "--lr", lr,
                              "--warmup", 5, "--elastic", "false", "--patch", *TRAIN_PATCH,
                              "--threads", 2),
                     log / "train.log")
    last = [ln for ln in (log / "train.log").read_text().splitlines() if "train:" in ln]
    print(f"  trained in {seconds:.0f} s: {last[-1].split('train: ', 1)[-1] if last else ''}",
          flush=True)
    return ckpt


# --- bookkeeping ---------------------------------------------------------------------------


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (what ``du`` counts)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def done(row, voxels: int, workdir: Path) -> None:
    stage, _, size_in, seconds, rss, size_out = row
    print(f"{stage}: {seconds:.0f} s, {voxels / seconds / 1e6:.2f} Mvoxel/s, peak RSS {gb(rss)} "
          f"({rss / size_in:.3f} x its input's {gb(size_in)}), output {gb(size_out)} on disk; "
          f"{gb(shutil.disk_usage(workdir).free)} free", flush=True)


def check_space(workdir: Path, shape, stages, keep: bool) -> None:
    """Refuse to start when the stages' largest footprint would not fit."""
    raw = 4 * math.prod(shape)
    # upper bounds: preprocessed float32 + 2 pyramid levels (1/4, 1/16), three
    # float16 classes, uint32 labels and segment's scratch labels (compressed,
    # these take far less; counted at a quarter)
    pre, probs, labels = raw * 1.33, raw * 1.5, raw * 0.5
    have = {"raw": disk_usage(workdir / "raw.ome.zarr"),
            "pre": disk_usage(workdir / "preprocessed.ome.zarr"),
            "probs": disk_usage(workdir / "probabilities.ome.zarr")}
    need = [0.0]
    if "generate" in stages:
        need.append(raw - have["raw"])
    if "preprocess" in stages:
        need.append(raw + pre - have["raw"] - have["pre"])
    if "predict" in stages:
        need.append(pre + probs - have["pre"] - have["probs"])
    if "segment" in stages:
        need.append(pre + probs + labels - have["pre"] - have["probs"])
    if keep:
        need.append(sum(need))
    free = shutil.disk_usage(workdir).free
    if max(need) + RESERVE > free:
        sys.exit(f"not enough disk space in {workdir}: {gb(free)} free, the run needs up to "
                 f"{gb(max(need))} plus {gb(RESERVE)} left for others; "
                 "use a smaller --gb or another --workdir")
    print(f"disk: {gb(free)} free in {workdir}; the run needs up to {gb(max(need))} "
          "(an upper bound)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=8.0,
                        help="Size of the raw float32 stack on disk, in GB (1e9 bytes).")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: a 0.25 GB stack and a 1-minute model.")
    parser.add_argument("--workdir", type=Path, default=CACHE / "big")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the preprocessed store and the outputs.")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=1, help="Depth of the small U-Net.")
    parser.add_argument("--features", type=int, default=4, help="Its first-level features.")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=0.01, help="Its learning rate.")
    parser.add_argument("--predict-block", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="predict --block (default: the command's).")
    parser.add_argument("--segment-block", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="segment --block (default: the command's).")
    args = parser.parse_args()
    if args.quick:
        args.gb, args.train_minutes = 0.25, 1.0

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    shape = stack_shape(args.gb)
    voxels = math.prod(shape)
    raw, pre = workdir / "raw.ome.zarr", workdir / "preprocessed.ome.zarr"
    probs, labels = workdir / "probabilities.ome.zarr", workdir / "labels.ome.zarr"
    table = workdir / "objects.csv"
    print(f"stack {' x '.join(map(str, shape))} float32 ({voxels / 1e9:.3f} G voxels, "
          f"{gb(4 * voxels)}), spacing {' x '.join(map(str, SPACING))} um, "
          f"{args.threads} threads, in {workdir}", flush=True)
    check_space(workdir, shape, args.stages, args.keep)
    ckpt = None
    if "model" in args.stages or "predict" in args.stages:
        ckpt = small_model(depth=args.depth, features=args.features,
                           minutes=args.train_minutes, lr=args.lr)

    rows = []
    threads = ("--threads", args.threads)
    if "generate" in args.stages:
        remove(raw)
        seconds = generate(raw, shape)
        print(f"generate: {gb(disk_usage(raw))} on disk (du) in {seconds:.0f} s; "
              f"{gb(shutil.disk_usage(workdir).free)} free", flush=True)
    if "preprocess" in args.stages:
        if not (raw / "zarr.json").exists():
            sys.exit(f"{raw} is missing: run the generate stage")
        remove(pre)
        size_in = disk_usage(raw)
        log = logs / "preprocess.log"
        seconds, rss = run(unetpipe(log, "preprocess", raw, pre, *threads), log)
        rows.append(("preprocess", "raw stack", size_in, seconds, rss, disk_usage(pre)))
        done(rows[-1], voxels, workdir)
        remove(raw)
    if "predict" in args.stages:
        if not (pre / "zarr.json").exists():
            sys.exit(f"{pre} is missing: run the preprocess stage")
        remove(probs)
        size_in = disk_usage(pre / "0")
        log = logs / "predict.log"
        block = ("--block", *args.predict_block) if args.predict_block else ()
        seconds, rss = run(unetpipe(log, "predict", ckpt, pre, probs, "--dtype", "float16",
                                    *block, "--resume", "false", *threads), log)
        rows.append(("predict", "preprocessed level 0", size_in, seconds, rss,
                     disk_usage(probs)))
        done(rows[-1], voxels, workdir)
    if "segment" in args.stages:
        if not (probs / "zarr.json").exists():
            sys.exit(f"{probs} is missing: run the predict stage")
        remove(labels)
        remove(table)
        size_in = disk_usage(probs)
        image = ("--image", pre) if (pre / "zarr.json").exists() else ()
        log = logs / "segment.log"
        block = ("--block", *args.segment_block) if args.segment_block else ()
        seconds, rss = run(unetpipe(log, "segment", probs, labels, "--table", table, *image,
                                    *block, "--resume", "false", *threads), log)
        rows.append(("segment --table", "probabilities", size_in, seconds, rss,
                     disk_usage(labels) + disk_usage(table)))
        done(rows[-1], voxels, workdir)
        import zarr

        n = zarr.open_group(str(labels), mode="r").attrs["unetpipe"]["objects"]
        made = int(NucleiField(shape, seed=0).present.sum())
        print(f"segment: {n} objects, {sum(1 for _ in open(table)) - 1} table rows; the "
              f"generator placed {made} nuclei", flush=True)
    if not args.keep:
        for path in (pre, probs, labels):
            remove(path)

    if not rows:
        return
    print()
    print(f"stack {' x '.join(map(str, shape))} float32, {voxels / 1e9:.3f} G voxels, "
          f"{args.threads} threads (Dask threaded scheduler), peak RSS of each stage's process")
    print(f"| {'stage':15s} | {'input':20s} | {'input on disk':>13s} | {'wall s':>7s} | "
          f"{'Mvoxel/s':>8s} | {'peak RSS':>9s} | {'RSS / input':>11s} | "
          f"{'output on disk':>14s} |")
    print("| " + " | ".join("-" * w for w in (15, 20, 13, 7, 8, 9, 11, 14)) + " |")
    for stage, what, size_in, seconds, rss, size_out in rows:
        print(f"| {stage:15s} | {what:20s} | {gb(size_in):>13s} | {seconds:7.0f} | "
              f"{voxels / seconds / 1e6:8.2f} | {gb(rss):>9s} | {rss / size_in:11.3f} | "
              f"{gb(size_out):>14s} |")
    total = sum(r[3] for r in rows)
    print(f"all stages: {total:.0f} s, {voxels / total / 1e6:.2f} Mvoxel/s; largest peak RSS "
          f"{gb(max(r[4] for r in rows))}")


if __name__ == "__main__":
    main()
