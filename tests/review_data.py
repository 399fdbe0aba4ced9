"""Hand-made results folders for the review tests (test_review, test_napari_review):
small label images with known objects, and the stores the workflow would write
for them."""

import os
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

from unetpipe.core import layout
from unetpipe.io import ngff
from unetpipe.io.images import write_ome_zarr
from unetpipe.stages.measure import measure_store, write_table


def labels_2d():
    """A 24 x 32 label image in 8 x 8 chunks: a square, two touching squares across
    the chunk seam x = 8, and a dumbbell (two 5 x 5 squares joined by a neck)."""
    lab = np.zeros((24, 32), np.uint32)
    lab[2:6, 2:6] = 1
    lab[10:14, 4:8] = 2
    lab[10:14, 8:12] = 3
    lab[17:22, 17:22] = 4
    lab[19, 22:24] = 4
    lab[17:22, 24:29] = 4
    return lab


def labels_3d():
    """An 8 x 64 x 64 stack: a cube, two touching boxes, a dumbbell along x."""
    lab = np.zeros((8, 64, 64), np.uint32)
    lab[1:4, 2:8, 2:8] = 1
    lab[2:6, 20:26, 10:16] = 2
    lab[2:6, 20:26, 16:22] = 3
    lab[2:7, 40:47, 30:37] = 4
    lab[4, 43, 37:39] = 4
    lab[2:7, 40:47, 39:46] = 4
    return lab


def probabilities_of(lab, seed=0):
    """Three-class probabilities that look like a network's for these labels."""
    rng = np.random.default_rng(seed)
    inside = ndi.gaussian_filter((lab > 0).astype(np.float32), 0.7)
    p = np.stack([1 - inside, 0.2 * inside, 0.8 * inside]) + rng.uniform(0, 0.05, (3, *lab.shape))
    return (p / p.sum(0, keepdims=True)).astype(np.float32)


def make_results(root, lab, *, sample="cells", chunks=None, spacing=None, levels=0,
                 version="0.5"):
    """A results folder as the workflow writes it for one sample (its stores in
    NGFF ``version``; the tests name chunk files as Zarr format 3 does by default)."""
    results = Path(root) / "results"
    ndim = lab.ndim
    spacing = spacing or [1.0] * ndim
    unit = "micrometer" if spacing != [1.0] * ndim else None
    chunks = chunks or ([8, 8] if ndim == 2 else [4, 32, 32])
    rng = np.random.default_rng(1)
    image = (rng.uniform(0, 0.3, lab.shape) + 0.6 * (lab > 0)).astype(np.float32)[None]
    paths = layout.sample_paths(results, sample)
    write_ome_zarr(paths.image, image, axes="c" + "zyx"[-ndim:], spacing=spacing, unit=unit,
                   chunks=chunks, version=version)
    write_ome_zarr(paths.probabilities, probabilities_of(lab), axes="c" + "zyx"[-ndim:],
                   spacing=spacing, unit=unit, chunks=chunks, version=version)
    write_ome_zarr(paths.labels, lab, axes="zyx"[-ndim:], spacing=spacing, unit=unit,
                   chunks=chunks, levels=levels, name="labels", version=version)
    root = zarr.open_group(str(paths.labels), mode="r+")
    for level in range(1, levels + 1):  # write_ome_zarr averages; labels are subsampled
        step = tuple(round(a / b) for a, b in zip(lab.shape, root[str(level)].shape, strict=True))
        root[str(level)][...] = lab[tuple(slice(None, None, f) for f in step)]
    table = measure_store(paths.labels, image_path=paths.image,
                          probabilities_path=paths.probabilities)
    write_table(table, paths.table)
    return paths


def chunk_files(store_path):
    """Every chunk file of a store: key -> (bytes, inode, mtime_ns)."""
    out = {}
    for dirpath, _, files in os.walk(store_path):
        for f in files:
            p = Path(dirpath) / f
            if f not in ngff.METADATA_FILES:
                st = p.stat()
                out[p.relative_to(store_path).as_posix()] = (p.read_bytes(), st.st_ino,
                                                             st.st_mtime_ns)
    return out


def tree(root):
    """Everything below ``root``, links not followed: relative path -> ("file", sha256,
    mtime_ns), ("link", target) or ("dir",); to tell that nothing was written, moved
    or removed."""
    import hashlib

    root, out = Path(root), {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(),
                            p.stat().st_mtime_ns)
    return out
