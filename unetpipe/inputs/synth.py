"""Synthetic fluorescence images of nuclei with exact instance labels.

The generator first places ellipses (2D) or ellipsoids (3D) in physical
space, many of them in small clusters whose members are pressed against
each other, rasterises them into an instance label image and finally
images that label image like a widefield microscope would (dim rims,
chromatin texture, uneven illumination, blur, shot and read noise).
Because the image is rendered *from* the labels, the labels are exact
ground truth for the image.

Everything here is a pure function of its arguments: no file I/O, no
configuration look-ups and no global random state.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "DOMAINS",
    "RANDOM_DOMAIN",
    "domain_options",
    "random_domain",
    "random_nuclei_labels",
    "render_nuclei",
    "synthetic_nuclei",
    "touching_pairs",
]

# Longest-to-shortest semi-axis ratio; real nuclei are rarely more elongated.
_MAX_ASPECT = 1.6
# Cluster mates are placed at this fraction of the sum of their radii along
# the line joining the centres: < 1 so that they overlap and therefore share
# a face after rasterisation, but not so much that one swallows the other.
_TOUCH_RANGE = (0.75, 0.95)
# Anything closer than this between cluster mates would make one nucleus
# mostly hidden behind another.
_MATE_MIN = 0.7
# Unrelated objects keep a clear gap so that every touching pair is one we
# made on purpose.
_APART = 1.1
# Placement stops after this many rejected proposals in a row (the image is
# then as full as random sequential placement can make it).
_MAX_FAILS = 400
# Cluster-member proposals allowed per intended member before a cluster is
# closed with fewer members (crowded neighbourhoods).
_MEMBER_TRIES = 12
# Objects smaller than this fraction of the smallest nominal object (slivers
# cut by the border or by a neighbour) are dropped.
_MIN_SIZE_FRACTION = 0.15
# Irregular outlines: each object's radius along a direction u is scaled by
# 1 + irregularity * m(u), where m is a signed sum of _LOBES smooth bumps
# exp(_LOBE_KAPPA * (u . v - 1)) around random directions v (bulges and
# dents), rescaled to span [0, 1]. The bumps are broad (about 25 degrees for
# kappa 6), so the outline changes over a few lobes per object, never pixel
# by pixel.
_LOBES = 5
_LOBE_KAPPA = 6.0
# Mean of m over directions (0.50 +- 0.01 measured in 2D and 3D): ellipses
# are shrunk by 1 + irregularity * _LOBE_MEAN so that `radius` stays the
# mean radius, and the coverage counts the lobes with it.
_LOBE_MEAN = 0.5

_IMAGING_DEFAULTS = {
    "photons": 200.0,
    "brightness_spread": 0.35,
    "rim_width": 1.5,
    "rim_depth": 0.5,
    "texture": 0.15,
    "texture_scale": 1.5,
    "background": 15.0,
    "background_variation": 0.4,
    "shading": 0.1,
    "illumination_scale": 300.0,
    "psf_sigma": 1.2,
    "psf_axial_ratio": 2.5,
    "offset": 100.0,
    "gain": 1.0,
    "read_noise": 3.0,
}
_LABEL_OPTIONS = ("radius", "fill_fraction", "cluster_fraction", "max_cluster_size",
                  "irregularity")


# ---------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------


def _check_shape(shape) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(
            f"shape must be 2 or 3 positive ints (Y, X) or (Z, Y, X), got {shape!r}"
        ) from None
    ok = len(dims) in (2, 3) and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in dims
    )
    if not ok:
        raise ValueError(
            f"shape must be 2 or 3 positive ints (Y, X) or (Z, Y, X), got {shape!r}"
        )
    return tuple(int(d) for d in dims)


def _check_spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    try:
        values = np.asarray(spacing, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}") from None
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return values


def _seed_entropy(seed, name):
    """Validate an int or a sequence of ints usable as SeedSequence entropy."""
    values = [seed] if isinstance(seed, numbers.Integral) else seed
    try:
        values = list(values)
    except TypeError:
        values = None
    if not values or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise ValueError(f"{name} must be a non-negative int or a sequence of them, got {seed!r}")
    ints = [int(v) for v in values]
    return ints[0] if isinstance(seed, numbers.Integral) else ints


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        # A fixed default keeps "no seed given" reproducible as well.
        return np.random.default_rng(0)
    return np.random.default_rng(_seed_entropy(rng, "rng"))


def _check_imaging_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(_IMAGING_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown imaging option(s) {unknown}; valid: {sorted(_IMAGING_DEFAULTS)}"
        )
    opts = {**_IMAGING_DEFAULTS, **options}
    for name, value in opts.items():
        if name == "psf_sigma" and np.ndim(value) == 1:
            continue  # per-axis sigmas, checked against the dimensionality later
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number) or number < 0:
            raise ValueError(f"imaging option {name!r} must be a finite number >= 0, got {value!r}")
        opts[name] = number
    for name in ("rim_width", "illumination_scale", "psf_axial_ratio"):
        if opts[name] <= 0:
            raise ValueError(f"imaging option {name!r} must be > 0, got {opts[name]!r}")
    if opts["rim_depth"] > 1:
        raise ValueError(f"imaging option 'rim_depth' must be <= 1, got {opts['rim_depth']!r}")
    return opts


# ---------------------------------------------------------------------------
# object placement
# ---------------------------------------------------------------------------


class _Placer:
    """Growing set of ellipsoids with vectorised collision checks.

    Objects are hashed into cells at least as wide as the largest
    interaction range, so a candidate is only compared with the objects in
    the neighbouring cells and the cost does not grow with the number of
    objects placed.
    """

    def __init__(self, spacing, origin, extent, max_reach, grow=1.0, capacity=256):
        ndim = len(spacing)
        self.spacing = spacing
        self.origin = origin
        self.step_max = float(spacing.max())
        # Irregular objects reach up to `grow` times their ellipsoid; only
        # the gap to unrelated objects uses it (cluster mates are placed by
        # their ellipsoids, and lobes can only add to the contact).
        self.grow = grow
        self.cell = 2.0 * _APART * max_reach * grow + self.step_max
        ncell = np.asarray([int(e // self.cell) + 3 for e in extent])
        self.strides = np.asarray([int(np.prod(ncell[k + 1:])) for k in range(ndim)])
        grid = np.indices((3,) * ndim).reshape(ndim, -1).T - 1
        self.offsets = [int(v) for v in grid @ self.strides]
        self.buckets: dict[int, list[int]] = {}
        self.n = 0
        self.centres = np.empty((capacity, ndim))
        # [A, A^-1]: x^T A x < 1 inside; A^-1 gives support functions
        self.forms = np.empty((capacity, 2, ndim, ndim))
        self.rmean = np.empty(capacity)
        self.reach = np.empty(capacity)  # longest semi-axis
        self.group = np.empty(capacity, dtype=np.int64)

    def _keys(self, centres):
        cells = np.floor((centres - self.origin) / self.cell).astype(np.int64) + 1
        return cells @ self.strides

    def check(self, centres, forms, reaches, group):
        """Whether each of K candidates fits; ``group=-1`` for a new group."""
        ok = np.ones(len(centres), dtype=bool)
        cand: list[int] = []
        objs: list[int] = []
        for c, key in enumerate(self._keys(centres).tolist()):
            for off in self.offsets:
                bucket = self.buckets.get(key + off)
                if bucket:
                    objs.extend(bucket)
                    cand.extend([c] * len(bucket))
        if not objs:
            return ok
        cand = np.asarray(cand)
        objs = np.asarray(objs)
        d = centres[cand] - self.centres[objs]
        d2 = np.einsum("ij,ij->i", d, d)
        # Cells are sized for the worst case; most of their objects are out
        # of reach, and dropping them first saves the costly form gather.
        reach = _APART * (self.reach[objs] + reaches[cand]) * self.grow + self.step_max
        close = np.flatnonzero(d2 < reach * reach)
        cand, objs, d, d2 = cand[close], objs[close], d[close], d2[close]
        # Quadratic forms of the unnormalised offset: with u = d / |d|,
        # radius along u is |d| / sqrt(d^T A d), support is sqrt(d^T M d) / |d|.
        old = np.sqrt(np.einsum("ni,nkij,nj->nk", d, self.forms[objs], d))
        new = np.sqrt(np.einsum("ni,nkij,nj->nk", d, forms[cand], d))
        # cluster mates: |d| > MATE * (r_old + r_new), strict so that
        # coincident centres fail
        ok_mate = old[:, 0] * new[:, 0] > _MATE_MIN * (old[:, 0] + new[:, 0])
        # Others: support functions give a separating plane, which guarantees
        # disjointness (radii along u would not). A gap of at least one
        # voxel step along u keeps them from becoming face neighbours on the
        # grid, which matters with coarse z.
        support = (old[:, 1] + new[:, 1]) * self.grow
        step = np.max(np.abs(d) * self.spacing, axis=1)
        ok_apart = d2 > np.maximum(_APART * support, support + step)
        good = np.where(self.group[objs] == group, ok_mate, ok_apart)
        ok[cand[~good]] = False
        return ok

    def add(self, centre, forms, rmean, reach, group) -> int:
        if self.n == len(self.rmean):
            cap = 2 * len(self.rmean)
            for name in ("centres", "forms", "rmean", "reach", "group"):
                old = getattr(self, name)
                new = np.empty((cap, *old.shape[1:]), dtype=old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        i = self.n
        self.centres[i] = centre
        self.forms[i] = forms
        self.rmean[i] = rmean
        self.reach[i] = reach
        self.group[i] = group
        key = int(self._keys(centre[None])[0])
        self.buckets.setdefault(key, []).append(i)
        self.n += 1
        return i


def _random_bodies(rng, ndim, r_lo, r_hi, count):
    """`count` random ellipsoids: forms [A, A^-1] of shape (count, 2, d, d), radii."""
    r = rng.uniform(r_lo, r_hi, count)
    aspect = rng.uniform(1.0, _MAX_ASPECT, count)
    if ndim == 2:
        expo = np.broadcast_to([0.5, -0.5], (count, 2))
        theta = rng.uniform(0.0, np.pi, count)
        c, s = np.cos(theta), np.sin(theta)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)
    else:
        mid = rng.uniform(-0.5, 0.5, count)
        expo = np.stack([0.5 - mid / 3, 2 * mid / 3, -0.5 - mid / 3], 1)
        # a normalised Gaussian 4-vector is a uniformly random unit quaternion
        q = rng.standard_normal((count, 4))
        w, x, y, z = (q / np.sqrt(np.sum(q * q, axis=1, keepdims=True))).T
        rot = 2.0 * np.stack([
            np.stack([0.5 - y * y - z * z, x * y - z * w, x * z + y * w], -1),
            np.stack([x * y + z * w, 0.5 - x * x - z * z, y * z - x * w], -1),
            np.stack([x * z - y * w, y * z + x * w, 0.5 - x * x - y * y], -1),
        ], 1)
    # exponents sum to zero, so the volume equals that of a ball of radius r
    axes = r[:, None] * aspect[:, None] ** expo
    forms = np.stack([
        np.einsum("nij,nj,nkj->nik", rot, axes**-2, rot),
        np.einsum("nij,nj,nkj->nik", rot, axes**2, rot),
    ], 1)
    return forms, r, axes.max(axis=1)


class _BodyPool:
    """Random bodies drawn from the generator in fixed-size blocks."""

    def __init__(self, rng, ndim, r_lo, r_hi, block=512):
        self.args = (rng, ndim, r_lo, r_hi, block)
        self.pos = block
        self.block = block

    def take(self, count):
        parts = []
        while count > 0:
            if self.pos == self.block:
                forms, radii, reach = _random_bodies(*self.args)
                # bounding-box half extents, for the coverage estimate
                half = np.sqrt(np.einsum("nii->ni", forms[:, 1]))
                self.data = (forms, radii, reach, half)
                self.pos = 0
            k = min(count, self.block - self.pos)
            parts.append([x[self.pos : self.pos + k] for x in self.data])
            self.pos += k
            count -= k
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(p) for p in zip(*parts, strict=True)]


def _place_objects(shape, spacing, rng, radius, fill_fraction, cluster_fraction,
                   max_cluster_size, irregularity=0.0):
    ndim = len(shape)
    smin = spacing.min()
    r_lo, r_hi = radius[0] * smin, radius[1] * smin
    # pixel i has its centre at i * spacing; the domain covers whole pixels
    lo = -0.5 * spacing
    hi = (np.asarray(shape) - 0.5) * spacing
    target = fill_fraction * float(np.prod(hi - lo))
    ball = np.pi if ndim == 2 else 4.0 * np.pi / 3.0
    # largest semi-axis any body can have (aspect exponent <= 2/3 in 3D)
    max_reach = r_hi * _MAX_ASPECT ** (2.0 / 3.0 if ndim == 3 else 0.5)
    placer = _Placer(spacing, lo, hi - lo, max_reach, grow=1.0 + irregularity)
    # lobes add to the area (volume) an object covers, roughly by this factor
    lobe_gain = (1.0 + _LOBE_MEAN * irregularity) ** ndim
    pool = _BodyPool(rng, ndim, r_lo, r_hi)
    lo_list, hi_list = lo.tolist(), hi.tolist()

    def place(centre, forms, radius, reach, half, group):
        # Coverage counts only the part inside the image, estimated by
        # clipping the bounding box, so border objects do not overfill.
        inside = radius**ndim * ball * lobe_gain
        for c, h, a, b in zip(centre.tolist(), half.tolist(), lo_list, hi_list, strict=True):
            inside *= max(min(c + h, b) - max(c - h, a), 0.0) / (2.0 * h)
        return placer.add(centre, forms, radius, reach, group), inside

    # Proposals are drawn and screened in blocks: per-proposal generator and
    # numpy calls would dominate the run time. Block sizes are fixed, so the
    # output stays a pure function of the seed.
    free_block, mate_block = 128, 8
    pos = free_block
    covered = 0.0
    fails = 0
    group = 0
    while covered < target and fails < _MAX_FAILS:
        if pos == free_block:
            centres = rng.uniform(lo, hi, (free_block, ndim))
            forms, radii, reaches, halves = pool.take(free_block)
            # Objects are never removed, so a candidate that collides now
            # will still collide later and can be dropped without a recheck.
            passed = placer.check(centres, forms, reaches, -1)
            n_screened = placer.n
            pos = 0
        i = pos
        pos += 1
        if not passed[i] or (
            placer.n > n_screened
            and not placer.check(centres[i : i + 1], forms[i : i + 1], reaches[i : i + 1], -1)[0]
        ):
            fails += 1
            continue
        fails = 0
        first, volume = place(centres[i], forms[i], radii[i], reaches[i], halves[i], group)
        covered += volume
        members = [first]
        if max_cluster_size >= 2 and rng.random() < cluster_fraction:
            size = int(rng.integers(2, max_cluster_size + 1))
            tries = 0
            while len(members) < size and tries < _MEMBER_TRIES * size:
                tries += mate_block
                anchors = np.asarray(members)[rng.integers(len(members), size=mate_block)]
                u = rng.standard_normal((mate_block, ndim))
                u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
                m_forms, m_radii, m_reaches, m_halves = pool.take(mate_block)
                r_anchor = np.einsum("ni,nij,nj->n", u, placer.forms[anchors, 0], u) ** -0.5
                r_new = np.einsum("ni,nij,nj->n", u, m_forms[:, 0], u) ** -0.5
                gap = rng.uniform(*_TOUCH_RANGE, mate_block) * (r_anchor + r_new)
                m_centres = placer.centres[anchors] + gap[:, None] * u
                ok = np.all((m_centres >= lo) & (m_centres <= hi), axis=1)
                ok[ok] = placer.check(m_centres[ok], m_forms[ok], m_reaches[ok], group)
                if ok.any():
                    j = int(np.argmax(ok))
                    new, volume = place(m_centres[j], m_forms[j], m_radii[j], m_reaches[j],
                                        m_halves[j], group)
                    covered += volume
                    members.append(new)
        group += 1
    n = placer.n
    return placer.centres[:n], placer.forms[:n, 0], placer.forms[:n, 1], placer.rmean[:n]


def _random_lobes(rng, count, ndim, irregularity):
    """Outline modulation of `count` objects, for :func:`_rasterise`.

    Returns the bump directions ``(count, _LOBES, ndim)``, their heights
    ``(count, _LOBES)`` and, per object, the offset and scale that map the
    summed bumps onto [0, 1] (found on a fine set of directions).
    """
    dirs = rng.standard_normal((count, _LOBES, ndim))
    dirs /= np.maximum(np.linalg.norm(dirs, axis=2, keepdims=True), 1e-12)
    heights = rng.uniform(0.2, 1.0, (count, _LOBES)) * rng.choice([-1.0, 1.0], (count, _LOBES))
    if ndim == 2:
        angle = np.linspace(0.0, 2.0 * np.pi, 256, endpoint=False)
        probe = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    else:  # a Fibonacci lattice covers the sphere evenly
        k = np.arange(1024) + 0.5
        z = 1.0 - 2.0 * k / 1024
        phi = np.pi * (3.0 - np.sqrt(5.0)) * k
        ring = np.sqrt(1.0 - z * z)
        probe = np.stack([z, ring * np.cos(phi), ring * np.sin(phi)], axis=1)
    low, high = np.empty(count), np.empty(count)
    for start in range(0, count, 1024):  # bounded memory for stacks of many objects
        part = slice(start, start + 1024)
        bumps = np.exp(_LOBE_KAPPA * (np.einsum("njk,pk->npj", dirs[part], probe) - 1.0))
        summed = np.einsum("npj,nj->np", bumps, heights[part])
        low[part], high[part] = summed.min(axis=1), summed.max(axis=1)
    return dirs, heights, low, np.maximum(high - low, 1e-12), float(irregularity)


def _rasterise(shape, spacing, centres, quad, cov, rmean, lobes=None):
    ndim = len(shape)
    labels = np.zeros(shape, dtype=np.int32)
    # Power-like distance (f - 1) * r^2 of the current owner; only negative
    # values (inside an object) can win, so background starts at 0.
    best = np.zeros(shape, dtype=np.float32)
    dims = np.asarray(shape)
    half_px = np.sqrt(np.einsum("nii->ni", cov)) / spacing
    if lobes is not None:
        half_px = half_px * (1.0 + lobes[-1])
    centre_px = centres / spacing
    starts = np.clip(np.floor(centre_px - half_px).astype(np.int64), 0, dims)
    stops = np.clip(np.ceil(centre_px + half_px).astype(np.int64) + 1, 0, dims)
    pairs = [(k, m) for k in range(ndim) for m in range(k, ndim)]
    for i in range(len(centres)):
        a, b = starts[i], stops[i]
        if np.any(b <= a):
            continue
        coords = []
        for k in range(ndim):
            x = (np.arange(a[k], b[k]) * spacing[k] - centres[i, k]).astype(np.float32)
            view = [1] * ndim
            view[k] = -1
            coords.append(x.reshape(view))
        f = np.zeros(tuple(b - a), dtype=np.float32)
        q = quad[i]
        for k, m in pairs:
            weight = q[k, k] if k == m else 2.0 * q[k, m]
            f += np.float32(weight) * (coords[k] * coords[m])
        if lobes is not None:
            f /= _lobe_factor(coords, i, lobes) ** 2
        score = (f - np.float32(1.0)) * np.float32(rmean[i] ** 2)
        box = tuple(slice(a[k], b[k]) for k in range(ndim))
        sub_best = best[box]
        win = score < sub_best
        sub_best[win] = score[win]
        labels[box][win] = i + 1
    return labels


def _lobe_factor(coords, i, lobes):
    """``1 + irregularity * m(u)`` of object `i` at the given offsets."""
    dirs, heights, low, span, irregularity = lobes
    norm = np.sqrt(sum(c * c for c in coords))
    norm = np.maximum(norm, np.float32(1e-12))
    summed = np.zeros(norm.shape, dtype=np.float32)
    for j in range(dirs.shape[1]):
        cosine = sum(c * np.float32(dirs[i, j, k]) for k, c in enumerate(coords)) / norm
        summed += np.float32(heights[i, j]) * np.exp(np.float32(_LOBE_KAPPA) * (cosine - 1))
    # the probe directions may miss the exact extremes by a hair; clipping
    # keeps every object inside its grown ellipsoid, which placement assumed
    m = np.clip((summed - np.float32(low[i])) / np.float32(span[i]), 0.0, 1.0)
    return 1.0 + np.float32(irregularity) * m


def _clean_labels(labels, min_size):
    """Keep one face-connected component per id, drop tiny ones, relabel."""
    ndim = labels.ndim
    structure = ndi.generate_binary_structure(ndim, 1)
    keep_ids = []
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        sub = labels[box]
        mine = sub == idx
        comp, ncomp = ndi.label(mine, structure=structure)
        if ncomp > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            largest = int(np.argmax(sizes))
            sub[mine & (comp != largest)] = 0
            size = int(sizes[largest])
        else:
            size = int(np.count_nonzero(mine))
        if size < min_size:
            sub[mine] = 0
        else:
            keep_ids.append(idx)
    n = len(keep_ids)
    dtype = np.uint16 if n < np.iinfo(np.uint16).max else np.uint32
    lut = np.zeros(int(labels.max()) + 1, dtype=dtype)
    lut[np.asarray(keep_ids, dtype=np.int64)] = np.arange(1, n + 1, dtype=dtype)
    return lut[labels]


def random_nuclei_labels(shape, *, spacing=None, radius=(6.0, 12.0), fill_fraction=0.3,
                         cluster_fraction=0.6, max_cluster_size=5, irregularity=0.0,
                         rng=None) -> np.ndarray:
    """Random instance labels of ellipse/ellipsoid nuclei, many of them touching.

    Objects are placed in physical space until roughly `fill_fraction` of the
    image is covered. With probability `cluster_fraction` a new object seeds
    a cluster whose members are pressed against each other and share a
    face-connected boundary; clusters and isolated objects keep a gap to
    everything else, so every touching pair is intended.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    spacing : sequence of float, optional
        Physical pixel size per axis, e.g. ``(2.0, 0.5, 0.5)``; None means
        isotropic unit spacing.
    radius : tuple of float
        Range ``(low, high)`` of the mean object radius, in pixels of the
        finest axis (physical radius = radius * min(spacing)).
    fill_fraction : float
        Fraction of the image volume to cover, approximately (placement
        stops earlier when no free space is left).
    cluster_fraction : float
        Probability that a newly placed object starts a touching cluster.
    max_cluster_size : int
        Clusters get 2 to `max_cluster_size` members (fewer if there is no
        room); values below 2 disable clustering.
    irregularity : float
        Height of smooth bulges and dents on the outlines, relative to the
        object's radius, in [0, 1]. 0 gives plain ellipses (ellipsoids);
        0.4 lets an object's radius vary by 40 % around its outline in a few
        broad lobes. The lobes only add to an inner ellipse by which cluster
        mates are placed, so mates still touch, and unrelated objects keep
        their gap around the outermost outline.
    rng : numpy.random.Generator or int, optional
        Random source or non-negative seed (an int or a sequence of ints);
        None means seed 0. A Generator is advanced.

    Returns
    -------
    labels : ndarray of shape (M, N) or (P, M, N)
        Instance ids ``1..n`` (0 is background), uint16 when n < 65535
        otherwise uint32. Each id is one face-connected component.

    Notes
    -----
    Semi-axes are drawn with an aspect ratio of up to 1.6 and the volume of
    a ball with radius uniform in `radius`; orientations are uniformly
    random. Cluster mates are placed at 0.75-0.95 times the sum of their
    radii along the joining line and never closer than 0.7 times it; other
    objects keep a separating gap of at least 10 % of their summed extents
    (and at least one pixel step). Overlaps are given to the object with the
    smallest power-like distance ``(f - 1) * r**2``, where ``f < 1`` is the
    ellipsoid's implicit function, which makes shared boundaries flat.
    Objects smaller than 15 % of the smallest nominal object are dropped.

    With `irregularity` ``e > 0`` the radius of an object along a direction
    ``u`` becomes ``(1 + e * m(u))`` times that of its ellipse, where ``m``
    sums five broad bulges and dents (about 25 degrees wide) around random
    directions and is rescaled to span [0, 1]; the implicit function is
    divided by ``(1 + e * m(u))**2``. The ellipses are first shrunk by
    ``1 + e / 2`` (the mean of ``m`` is 1/2), so `radius` stays the mean
    radius. The outline stays star-shaped about the centre, so each object
    stays one piece. The lobes are drawn after placement, and at ``e = 0``
    nothing is drawn, so ``irregularity=0`` gives exactly the plain
    ellipses.

    Examples
    --------
    >>> labels = random_nuclei_labels((128, 128), rng=1)
    >>> labels.shape, labels.dtype
    ((128, 128), dtype('uint16'))
    """
    shape = _check_shape(shape)
    ndim = len(shape)
    spacing = _check_spacing(spacing, ndim)
    try:
        r_lo, r_hi = (float(r) for r in radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a pair (low, high), got {radius!r}") from None
    if not (0 < r_lo <= r_hi and np.isfinite(r_hi)):
        raise ValueError(f"radius must satisfy 0 < low <= high, got {radius!r}")
    if not 0 < fill_fraction < 1:
        raise ValueError(f"fill_fraction must be in (0, 1), got {fill_fraction!r}")
    if not 0 <= cluster_fraction <= 1:
        raise ValueError(f"cluster_fraction must be in [0, 1], got {cluster_fraction!r}")
    if not isinstance(max_cluster_size, numbers.Integral) or max_cluster_size < 1:
        raise ValueError(f"max_cluster_size must be an int >= 1, got {max_cluster_size!r}")
    try:
        lobe_height = float(irregularity)
    except (TypeError, ValueError):
        lobe_height = float("nan")
    if not 0 <= lobe_height <= 1:
        raise ValueError(f"irregularity must be in [0, 1], got {irregularity!r}")
    irregularity = lobe_height
    rng = _as_rng(rng)

    # the lobes add about irregularity * _LOBE_MEAN to the mean radius
    shrink = 1.0 + _LOBE_MEAN * irregularity
    centres, quad, cov, rmean = _place_objects(
        shape, spacing, rng, (r_lo / shrink, r_hi / shrink), fill_fraction, cluster_fraction,
        int(max_cluster_size), irregularity,
    )
    lobes = _random_lobes(rng, len(centres), ndim, irregularity) if irregularity > 0 else None
    raw = _rasterise(shape, spacing, centres, quad, cov, rmean, lobes)
    ball = np.pi if ndim == 2 else 4.0 * np.pi / 3.0
    smallest = ball * (r_lo * spacing.min()) ** ndim / np.prod(spacing)
    return _clean_labels(raw, max(2.0, _MIN_SIZE_FRACTION * smallest))


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def _smooth_field(shape, spacing, scale, rng):
    """Zero-mean, unit-variance random field varying over `scale` (physical).

    Built from a coarse grid of random values blended with separable
    Gaussian weights, so the cost is a few small matrix products instead of
    a full-size filter or spline zoom.
    """
    step = scale / 2.0
    weights = []
    for k, n in enumerate(shape):
        x = np.arange(n) * spacing[k]
        nodes = np.arange(-step, x[-1] + 2 * step, step)
        w = np.exp(-0.5 * ((x[:, None] - nodes[None, :]) / step) ** 2)
        w /= w.sum(axis=1, keepdims=True)
        # The variance of a weighted sum of iid normals is sum(w^2), and it
        # factorises over axes, so normalising each axis' rows makes every
        # pixel unit-variance without a full-size pass.
        w /= np.sqrt(np.sum(w**2, axis=1, keepdims=True))
        weights.append(w)
    field = rng.standard_normal(tuple(len(w[0]) for w in weights))
    for k, w in enumerate(weights):
        field = np.moveaxis(np.tensordot(w, field, axes=(1, k)), 0, k)
    return field.astype(np.float32)


def _shared_boundary(labels):
    """Pixels with a face neighbour carrying a different non-zero id."""
    shared = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        a, b = labels[tuple(lo)], labels[tuple(hi)]
        contact = (a != b) & (a != 0) & (b != 0)
        shared[tuple(lo)] |= contact
        shared[tuple(hi)] |= contact
    return shared


def _psf_sigmas(psf_sigma, psf_axial_ratio, spacing):
    ndim = len(spacing)
    if np.ndim(psf_sigma) == 1:
        sig = np.asarray(psf_sigma, dtype=float)
        if sig.shape != (ndim,) or np.any(sig < 0):
            raise ValueError(f"psf_sigma must be a number or {ndim} numbers >= 0, got {psf_sigma!r}")
        return sig
    lateral = float(psf_sigma) * spacing.min()
    phys = np.full(ndim, lateral)
    if ndim == 3:
        phys[0] *= psf_axial_ratio
    return phys / spacing


def render_nuclei(labels, *, spacing=None, rng=None, **imaging_options) -> np.ndarray:
    """Image a nuclei label image like a widefield fluorescence microscope.

    Parameters
    ----------
    labels : ndarray of shape (M, N) or (P, M, N)
        Integer instance labels, 0 = background.
    spacing : sequence of float, optional
        Physical pixel size per axis; None means isotropic unit spacing.
        Lengths below given "in pixels" are pixels of the finest axis.
    rng : numpy.random.Generator or int, optional
        Random source or non-negative seed (an int or a sequence of ints);
        None means seed 0. A Generator is advanced.
    **imaging_options
        photons : float, default 200
            Expected photons in the interior of a nucleus of median
            brightness (before shading).
        brightness_spread : float, default 0.35
            Sigma of the log-normal per-nucleus brightness.
        rim_width : float, default 1.5
            Width (pixels) of the dim rim: intensity scales as
            ``1 - rim_depth * exp(-d / rim_width)`` with ``d`` the distance
            to the background or to a boundary shared with another nucleus.
        rim_depth : float, default 0.5
            Depth of the rim, in [0, 1]; 1 makes boundary pixels black.
        texture : float, default 0.15
            Relative amplitude of the multiplicative chromatin texture.
        texture_scale : float, default 1.5
            Correlation length (pixels) of the texture.
        background : float, default 15
            Mean diffuse background (photons).
        background_variation : float, default 0.4
            Relative amplitude (standard deviation) of the low-frequency
            background variation.
        shading : float, default 0.1
            Relative amplitude (standard deviation) of the illumination
            field that multiplies signal and background.
        illumination_scale : float, default 300
            Length scale (pixels) of background and shading variations.
        psf_sigma : float or sequence of float, default 1.2
            Lateral Gaussian PSF sigma in pixels, or one sigma per axis in
            pixels of that axis.
        psf_axial_ratio : float, default 2.5
            Axial-to-lateral PSF sigma ratio in physical units (3D only,
            ignored when `psf_sigma` is a sequence).
        offset : float, default 100
            Camera offset (counts).
        gain : float, default 1
            Counts per photon.
        read_noise : float, default 3
            Standard deviation of the Gaussian read noise (counts).

    Returns
    -------
    image : ndarray of shape (M, N) or (P, M, N)
        uint16 image, same shape as `labels`.

    Notes
    -----
    The expected photon count is ``shading * (blur(signal) + background)``
    where ``signal = photons * brightness * rim * texture`` on the objects.
    Counts are ``gain * Poisson(expected) + offset + read noise``, rounded
    and clipped to the uint16 range. The rim distance comes from a single
    Euclidean distance transform (with `spacing` as sampling) of the object
    mask minus the pixels on boundaries shared by two nuclei, so touching
    nuclei are separated by a darker line that a network can learn. Shading
    and background come from coarse random grids blended smoothly, so they
    cost almost nothing even for large images.

    The default rim depth is 0.5 rather than a full ``1 - exp(-d / w)``
    fall-off: a full-depth rim pulls the outermost pixels well below half
    maximum, so the labels would be visibly larger than the nuclei.

    Examples
    --------
    >>> labels = random_nuclei_labels((64, 64), rng=0)
    >>> image = render_nuclei(labels, rng=0, photons=500)
    >>> image.shape, image.dtype
    ((64, 64), dtype('uint16'))
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape!r}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    spacing = _check_spacing(spacing, labels.ndim)
    opts = _check_imaging_options(imaging_options)
    rng = _as_rng(rng)
    smin = spacing.min()
    shape = labels.shape
    lab = labels.astype(np.int64, copy=False)
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be >= 0")
    n_ids = int(lab.max()) if lab.size else 0
    if n_ids > lab.size:
        # Sparse ids (e.g. from another tool): compress them so the per-id
        # lookup table stays small; the leading 0 keeps background at 0.
        _, inverse = np.unique(np.concatenate([[0], lab.ravel()]), return_inverse=True)
        lab = inverse[1:].reshape(shape)
        n_ids = int(lab.max())
    brightness = np.zeros(n_ids + 1, dtype=np.float32)
    brightness[1:] = np.exp(opts["brightness_spread"] * rng.standard_normal(n_ids))
    # The rim is measured from background and from shared boundaries, in
    # physical units, so one transform serves both and coarse z is honoured.
    interior = (lab != 0) & ~_shared_boundary(lab)
    dist = ndi.distance_transform_edt(interior, sampling=spacing).astype(np.float32)
    rim = 1.0 - np.float32(opts["rim_depth"]) * np.exp(-dist / np.float32(opts["rim_width"] * smin))

    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, opts["texture_scale"] * smin / spacing, mode="wrap")
    noise /= max(float(noise.std()), 1e-12)
    texture = np.clip(1.0 + np.float32(opts["texture"]) * noise, 0.0, None)

    signal = (np.float32(opts["photons"]) * brightness[lab]) * rim * texture
    sigmas = _psf_sigmas(opts["psf_sigma"], opts["psf_axial_ratio"], spacing)
    if np.any(sigmas > 0):
        signal = ndi.gaussian_filter(signal, sigmas, mode="nearest")

    scale = opts["illumination_scale"] * smin
    variation = _smooth_field(shape, spacing, scale, rng)
    signal += np.float32(opts["background"]) * np.clip(
        1.0 + np.float32(opts["background_variation"]) * variation, 0.0, None
    )
    variation = _smooth_field(shape, spacing, scale, rng)
    signal *= np.clip(1.0 + np.float32(opts["shading"]) * variation, 0.05, None)

    counts = opts["gain"] * rng.poisson(signal).astype(np.float64)
    counts += opts["offset"]
    if opts["read_noise"] > 0:
        counts += opts["read_noise"] * rng.standard_normal(shape)
    return np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


# ---------------------------------------------------------------------------
# convenience
# ---------------------------------------------------------------------------


def synthetic_nuclei(shape, *, spacing=None, seed=0, **options) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic nuclei image with its exact instance labels.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    spacing : sequence of float, optional
        Physical pixel size per axis; None means isotropic unit spacing.
    seed : int or sequence of int
        Non-negative seed (a sequence such as ``[seed, role, index]`` derives
        independent streams); the same arguments always give bit-identical
        output. None means 0.
    **options
        ``radius``, ``fill_fraction``, ``cluster_fraction`` and
        ``max_cluster_size`` go to :func:`random_nuclei_labels`, everything
        else to :func:`render_nuclei` as imaging options.

    Returns
    -------
    image : ndarray of shape (M, N) or (P, M, N)
        uint16 fluorescence image.
    labels : ndarray of shape (M, N) or (P, M, N)
        Instance labels (uint16 or uint32), 0 = background.

    Notes
    -----
    The labels equal ``random_nuclei_labels(shape, spacing=spacing,
    rng=seed, ...)``; rendering uses an independent stream derived from
    `seed`, so changing imaging options never changes the labels.

    Examples
    --------
    >>> image, labels = synthetic_nuclei((96, 96), seed=3)
    >>> image.dtype, bool(labels.max() > 0)
    (dtype('uint16'), True)
    """
    entropy = _seed_entropy(0 if seed is None else seed, "seed")
    label_opts = {k: options.pop(k) for k in _LABEL_OPTIONS if k in options}
    labels = random_nuclei_labels(shape, spacing=spacing, rng=entropy, **label_opts)
    # A spawn key makes the rendering stream independent of the label stream
    # and of the label stream of any other seed.
    stream = np.random.SeedSequence(entropy, spawn_key=(1,))
    image = render_nuclei(labels, spacing=spacing, rng=np.random.default_rng(stream), **options)
    return image, labels


# ---------------------------------------------------------------------------
# named domains
# ---------------------------------------------------------------------------

#: Named sets of generator settings ("domains") for tests and benchmarks of
#: how a model does away from the demo's images. Each preset holds keyword
#: options of :func:`synthetic_nuclei` (``spacing`` where the domain is
#: calibrated) and a ``shape`` hint, the size of one training image. Read
#: them with :func:`domain_options`, which returns a copy.
#:
#: ``demo``
#:     Exactly the generator's defaults, which is what the built-in demo
#:     (:mod:`unetpipe.inputs.demo`) uses: radius 6-12 px, 30 % fill, 60 % of
#:     the objects in touching clusters of up to 5, 200 photons, PSF sigma
#:     1.2 px, a 1.5 px rim of depth 0.5.
#: ``small-blurry``
#:     Nuclei of about a quarter of the demo's area (radius 3-6 px, demo
#:     6-12), four times as many per image, blurred by a PSF of sigma 2 px
#:     (demo 1.2) and imaged with 60 photons (demo 200): the gaps between
#:     touching nuclei are smeared out and the signal-to-noise ratio is
#:     about a quarter of the demo's.
#: ``large-irregular``
#:     Nuclei of about 2.5 times the demo's area (radius 12-20 px) with
#:     lobed outlines (``irregularity`` 0.5; the demo's are ellipses),
#:     brighter (500 photons), with a strong, coarse chromatin texture (0.35
#:     at 2.5 px, demo 0.15 at 1.5 px) and a wide spread of brightness
#:     between nuclei (log-sigma 0.7, demo 0.35): dim nuclei next to bright
#:     ones, and texture that can look like internal boundaries.
#: ``soft-dense``
#:     Soft boundaries (a deep rim 5 px wide, depth 0.9, and PSF sigma 1.6:
#:     intensity ramps up over about 5 pixels instead of 2-3) on a crowded
#:     field (about 42 % covered, demo 29 %; 90 % of the objects start
#:     clusters of up to 8, so there are about as many touching pairs as
#:     objects, demo 0.7 per object), over a brighter, uneven background (40
#:     photons varying by 80 % over about 120 px, with 25 % shading; demo 15
#:     photons, 40 % over 300 px, 10 % shading). 400 photons keep the
#:     signal-to-noise ratio from dropping as far as in ``small-blurry``.
#: ``coarse-z-3d``
#:     Stacks with z sampled four times coarser than y and x (spacing 2.0,
#:     0.5, 0.5 micrometres), so a nucleus spans only about 4-7 planes;
#:     radius 8-14 px of the finest axis (4-7 micrometres), an axial PSF
#:     three times the lateral one (demo stacks: isotropic unit spacing,
#:     2.5 times) and 150 photons.
DOMAINS: dict[str, dict] = {
    "demo": {"shape": (256, 256)},
    "small-blurry": {
        "shape": (256, 256),
        "radius": (3.0, 6.0),
        "psf_sigma": 2.0,
        "photons": 60.0,
        "rim_width": 1.0,
        "texture_scale": 1.0,
    },
    "large-irregular": {
        "shape": (256, 256),
        "radius": (12.0, 20.0),
        "irregularity": 0.5,
        "photons": 500.0,
        "brightness_spread": 0.7,
        "texture": 0.35,
        "texture_scale": 2.5,
    },
    "soft-dense": {
        "shape": (256, 256),
        "fill_fraction": 0.45,
        "cluster_fraction": 0.9,
        "max_cluster_size": 8,
        "rim_width": 5.0,
        "rim_depth": 0.9,
        "psf_sigma": 1.6,
        "background": 40.0,
        "background_variation": 0.8,
        "shading": 0.25,
        "illumination_scale": 120.0,
        "photons": 400.0,
    },
    "coarse-z-3d": {
        "shape": (24, 128, 128),
        "spacing": (2.0, 0.5, 0.5),
        "radius": (8.0, 14.0),
        "psf_axial_ratio": 3.0,
        "photons": 150.0,
    },
}


def domain_options(name: str) -> dict:
    """The settings of a named domain of :data:`DOMAINS`, as a new dict.

    Parameters
    ----------
    name : str
        One of the keys of :data:`DOMAINS`, e.g. ``"small-blurry"``.

    Returns
    -------
    options : dict
        ``shape`` (the size of one training image, a tuple of int) and the
        keyword options of :func:`synthetic_nuclei`, ``spacing`` included
        where the domain has one. A fresh copy: changing it changes no
        preset.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known domains.

    Examples
    --------
    >>> options = domain_options("small-blurry")
    >>> image, labels = synthetic_nuclei(options.pop("shape"), seed=1, **options)
    >>> image.shape
    (256, 256)
    """
    try:
        preset = DOMAINS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown domain {name!r}; known domains: {', '.join(DOMAINS)}"
        ) from None
    return dict(preset)  # the presets hold only numbers and tuples


RANDOM_DOMAIN: dict[str, tuple] = {
    # objects: mean radius (pixels; the upper end of the range is the lower
    # end times the spread), density, touching, outline
    "radius": ("log", 3.0, 20.0),
    "radius_spread": ("uniform", 1.2, 2.0),
    "fill_fraction": ("uniform", 0.12, 0.5),
    "cluster_fraction": ("uniform", 0.1, 0.95),
    "max_cluster_size": ("int", 2, 8),
    "irregularity": ("uniform", 0.0, 0.6),
    # imaging: signal and its spread, boundary softness, texture, background,
    # illumination, blur, camera
    "photons": ("log", 40.0, 1000.0),
    "brightness_spread": ("uniform", 0.1, 0.8),
    "rim_width": ("log", 0.7, 6.0),
    "rim_depth": ("uniform", 0.2, 0.95),
    "texture": ("uniform", 0.0, 0.4),
    "texture_scale": ("uniform", 0.8, 3.0),
    "background": ("log", 3.0, 80.0),
    "background_variation": ("uniform", 0.0, 1.0),
    "shading": ("uniform", 0.0, 0.3),
    "illumination_scale": ("log", 80.0, 500.0),
    "psf_sigma": ("uniform", 0.7, 2.6),
    "offset": ("uniform", 50.0, 300.0),
    "read_noise": ("uniform", 1.0, 8.0),
}
"""The ranges :func:`random_domain` draws from: per setting ``(law, low, high)``,
``"uniform"``, ``"log"`` (uniform in the logarithm) or ``"int"`` (both ends
included). ``radius`` and ``radius_spread`` make the option ``radius``
``(r, r * spread)``. The named :data:`DOMAINS` (2D) lie inside these ranges."""


def random_domain(rng) -> dict:
    """One draw of domain settings for :func:`synthetic_nuclei`, from :data:`RANDOM_DOMAIN`.

    Domain randomisation: a model trained on images whose object size, blur,
    noise, texture, background, boundary softness, brightness, shape
    irregularity, density and touching all vary learns what nuclei have in
    common rather than one look (unetpipe's starter model is trained so).

    Parameters
    ----------
    rng : numpy.random.Generator or int
        Random source or non-negative seed; a Generator is advanced.

    Returns
    -------
    options : dict
        Keyword options of :func:`synthetic_nuclei` (no ``shape``, no
        ``spacing``: pixel units), plain Python numbers and tuples.

    Examples
    --------
    >>> options = random_domain(3)
    >>> image, labels = synthetic_nuclei((64, 64), seed=3, **options)
    >>> image.dtype.name, sorted(options) == sorted(random_domain(4))
    ('uint16', True)
    """
    rng = _as_rng(rng)
    drawn = {}
    for name, (law, low, high) in RANDOM_DOMAIN.items():
        if law == "int":
            drawn[name] = int(rng.integers(low, high + 1))
        elif law == "log":
            drawn[name] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        else:
            drawn[name] = float(rng.uniform(low, high))
    radius, spread = drawn.pop("radius"), drawn.pop("radius_spread")
    return {"radius": (radius, radius * spread), **drawn}


def touching_pairs(labels) -> set[tuple[int, int]]:
    """Pairs of different objects that share a face.

    Parameters
    ----------
    labels : ndarray of shape (M, N) or (P, M, N)
        Integer instance labels, 0 = background.

    Returns
    -------
    pairs : set of tuple of int
        ``(smaller, larger)`` ids of every pair of non-zero labels that are
        face neighbours somewhere (diagonal contact does not count).

    Examples
    --------
    >>> touching_pairs(np.array([[1, 2, 0], [0, 0, 3], [0, 3, 3]]))
    {(1, 2)}
    """
    labels = np.asarray(labels)
    if labels.ndim == 0:
        raise ValueError("labels must have at least one dimension")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    lab = labels.astype(np.int64, copy=False)
    found = []
    for axis in range(lab.ndim):
        a = np.moveaxis(lab, axis, 0)
        first, second = a[:-1].ravel(), a[1:].ravel()
        hit = (first != second) & (first != 0) & (second != 0)
        if hit.any():
            p, q = first[hit], second[hit]
            found.append(np.stack([np.minimum(p, q), np.maximum(p, q)], axis=1))
    if not found:
        return set()
    uniq = np.unique(np.concatenate(found), axis=0)
    return {(int(p), int(q)) for p, q in uniq}
