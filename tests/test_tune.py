"""The tune stage: segmentation settings searched on validation images."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetpipe.core.errors import ConfigError, InputError
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import write_ome_zarr, write_tiff
from unetpipe.stages.instances import SegmentParams, segment_array
from unetpipe.stages.metrics import overlap_table, pool_scores, score
from unetpipe.stages.tune import (
    TuneResult,
    TuneSearch,
    tune_params,
    tune_stores,
    window_grid,
)
from unetpipe.stages.weights import targets_for_mode


def too_wide(labels, *, noise=0.05, seed=0):
    """Three-class probabilities like a real network's: soft at the borders, the
    cell classes reaching one pixel beyond the objects, a little noise."""
    targets = targets_for_mode(labels, "three_class")
    face = ndi.generate_binary_structure(labels.ndim, 1)
    cell = ndi.binary_dilation(targets > 0, structure=face)
    p_cell = ndi.gaussian_filter(cell.astype(np.float32), 1.0)
    p_interior = np.minimum(ndi.gaussian_filter((targets == 1).astype(np.float32), 1.0), p_cell)
    p = np.stack([1 - p_cell, p_interior, p_cell - p_interior])
    p += np.random.default_rng(seed).uniform(0, noise, p.shape)
    return (p / p.sum(0)).astype(np.float32)


def median_area_ratio(truth, pred):
    """Median over the true objects of (area of the predicted object covering most of
    it) / (its area)."""
    gi, pi, inter, _ = overlap_table(truth, pred)
    true_area = np.bincount(truth.ravel().astype(np.int64))
    pred_area = np.bincount(pred.ravel().astype(np.int64))
    best = {}
    for g, p, n in zip(gi.tolist(), pi.tolist(), inter.tolist(), strict=True):
        if n > best.get(g, (0, 0))[0]:
            best[g] = (n, p)
    return float(np.median([pred_area[p] / true_area[g] for g, (_, p) in best.items()]))


def disc(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius ** 2


def two_class(cell):
    cell = np.asarray(cell, np.float32)
    return np.stack([1 - cell, cell]).astype(np.float32)


@pytest.fixture(scope="module")
def nuclei_pairs():
    pairs = []
    for seed in (1, 2):
        _, labels = synthetic_nuclei((128, 128), seed=seed)
        pairs.append((too_wide(labels, seed=seed), labels))
    return pairs


@pytest.fixture(scope="module")
def tuned(nuclei_pairs):
    return tune_params(nuclei_pairs, progress=False)


def test_tune_corrects_objects_a_pixel_too_wide(nuclei_pairs, tuned):
    defaults = SegmentParams()
    for probs, labels in nuclei_pairs:
        assert median_area_ratio(labels, segment_array(probs, params=defaults)) > 1.1
        assert median_area_ratio(labels, segment_array(probs, params=tuned.params)) == \
            pytest.approx(1.0, abs=0.05)
    # measured: 0.670 -> 0.996 mean AP
    assert tuned.defaults_score < 0.75
    assert tuned.score > tuned.defaults_score + 0.2
    assert tuned.score > 0.95
    # the reported score is the pooled mean AP of the chosen settings, recomputed here
    pooled = pool_scores(score(t, segment_array(p, params=tuned.params)) for p, t in nuclei_pairs)
    assert tuned.score == pytest.approx(pooled.mean_ap)
    assert tuned.objective == "mean_ap"


def test_defaults_scored_first_and_no_setting_twice(nuclei_pairs, tuned):
    first_params, first_score = tuned.history[0]
    assert SegmentParams(**first_params) == SegmentParams()
    assert first_score == tuned.defaults_score
    pooled = pool_scores(score(t, segment_array(p)) for p, t in nuclei_pairs)
    assert tuned.defaults_score == pytest.approx(pooled.mean_ap)
    assert tuned.score >= tuned.defaults_score
    assert tuned.score == max(s for _, s in tuned.history)
    keys = [tuple(sorted(p.items(), key=lambda kv: kv[0])) for p, _ in tuned.history]
    assert len(set(keys)) == len(keys) == tuned.n_tried
    assert 100 < tuned.n_tried <= 300
    # all three families were searched
    families = {(p["method"], p["seeds"] if p["method"] == "watershed" else None)
                for p, _ in tuned.history}
    assert families == {("components", None), ("watershed", "classes"),
                        ("watershed", "distance")}


def test_start_settings_kept_when_nothing_scores_better():
    # exact probabilities of separated discs: the start settings score 1
    cell = np.zeros((48, 48), bool)
    labels = np.zeros((48, 48), np.uint16)
    for i, center in enumerate([(12, 12), (12, 34), (34, 20)], start=1):
        labels[disc(labels.shape, center, 6)] = i
    cell = labels > 0
    start = SegmentParams(threshold=0.45, foreground=0.55, min_size=5)
    result = tune_params([(two_class(cell), labels)], start=start, progress=False)
    assert result.defaults_score == result.score == 1.0
    assert result.params == start


def test_threshold_between_two_plateaus():
    # true discs at P(cell) = 0.85, spurious blobs (not in the truth) at 0.5: only a
    # threshold in (0.5, 0.85] keeps the discs and drops the blobs
    labels = np.zeros((64, 64), np.uint16)
    cell = np.zeros((64, 64), np.float32)
    for i, center in enumerate([(12, 12), (12, 50), (50, 12), (50, 50)], start=1):
        labels[disc(labels.shape, center, 6)] = i
        cell[disc(cell.shape, center, 6)] = 0.85
    for center in [(31, 12), (31, 50), (12, 31)]:
        cell[disc(cell.shape, center, 5)] = 0.5
    start = SegmentParams(threshold=0.3, min_size=0)
    result = tune_params([(two_class(cell), labels)], start=start, progress=False)
    assert result.defaults_score == pytest.approx(4 / 7)  # 4 TP, 3 FP at every IoU
    assert result.score == 1.0
    assert 0.5 < result.params.threshold <= 0.85
    # only the threshold had to change: the other settings stay as started
    assert result.params == SegmentParams(threshold=result.params.threshold, min_size=0)


def test_refinement_finds_a_threshold_between_grid_values():
    # discs of radius 8 whose probability steps down at the border: 0.9 inside radius 6,
    # 0.66 out to radius 8 (the objects' edge), 0.64 out to radius 10 (too wide). Only
    # a threshold in (0.64, 0.66] gives the true outlines; the grid (0.6, 0.7) has none
    labels = np.zeros((64, 64), np.uint16)
    cell = np.zeros((64, 64), np.float32)
    centers = [(14, 14), (14, 50), (50, 14), (50, 50)]
    for i, center in enumerate(centers, start=1):
        labels[disc(labels.shape, center, 8)] = i
    for center in centers:
        cell[disc(cell.shape, center, 10)] = 0.64
        cell[disc(cell.shape, center, 8)] = 0.66
        cell[disc(cell.shape, center, 6)] = 0.9
    result = tune_params([(two_class(cell), labels)], progress=False)
    assert result.defaults_score == pytest.approx(0.3)  # IoU 0.64: AP 1 up to 0.6, then 0
    assert result.score == 1.0
    assert 0.64 < result.params.threshold <= 0.66
    grid_only = tune_params([(two_class(cell), labels)], search={"steps": [0.4], "grow": [0]},
                            progress=False)
    assert grid_only.score < 1.0


def test_other_objectives(nuclei_pairs):
    probs, labels = nuclei_pairs[0]
    search = TuneSearch(methods=("components",), steps=(0.05,))
    for objective, measure in [("ap_0.7", lambda s: s.ap(0.7)), ("f1_0.5", lambda s: s.f1(0.5))]:
        result = tune_params([(probs, labels)], objective=objective, search=search,
                             progress=False)
        assert result.objective == objective
        for params, value in (result.history[0], result.history[-1]):
            scores = score(labels, segment_array(probs, params=SegmentParams(**params)),
                           thresholds=[0.5, 0.7])
            assert value == pytest.approx(measure(scores))
        assert result.score == max(v for _, v in result.history)
        assert result.score >= result.defaults_score
        # the start is scored even where its family (watershed) is not searched
        assert result.history[0][0]["method"] == "watershed"
        assert all(p["method"] == "components" for p, _ in result.history[1:])
    with pytest.raises(ConfigError, match=r"tune\.objective"):
        tune_params([(probs, labels)], objective="ap_7", progress=False)
    with pytest.raises(ConfigError, match=r"tune\.search\.grid"):
        tune_params([(probs, labels)], search={"grid": [0.2, 1.5]}, progress=False)


def test_search_budget_is_respected(nuclei_pairs):
    result = tune_params(nuclei_pairs[:1], search={"max_settings": 20}, progress=False)
    assert result.n_tried == len(result.history) == 20
    assert result.score == max(s for _, s in result.history)


def test_bad_pairs_are_refused():
    probs = two_class(np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(8, 9\)"):
        tune_params([(probs, np.zeros((8, 9), np.uint8))], progress=False)
    with pytest.raises(ValueError, match="class channels"):
        tune_params([(np.zeros((4, 8, 8), np.float32), np.zeros((8, 8), np.uint8))],
                    progress=False)
    with pytest.raises(ValueError, match=r"no .* pairs"):
        tune_params([], progress=False)


def test_result_round_trip(tmp_path, tuned):
    import torch
    import yaml

    d = tuned.to_dict()
    assert TuneResult.from_dict(d) == tuned
    assert d["params"]["foreground"] == tuned.params.foreground
    assert len(d["history"]) == tuned.n_tried
    torch.save({"segment_params": d}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["segment_params"]
    assert TuneResult.from_dict(loaded) == tuned
    text = yaml.safe_dump(d)
    assert TuneResult.from_dict(yaml.safe_load(text)) == tuned
    bad = dict(d, params={**d["params"], "colour": 1})
    with pytest.raises(ValueError, match="colour"):
        TuneResult.from_dict(bad)
    with pytest.raises(ValueError, match="score"):
        TuneResult.from_dict({k: v for k, v in d.items() if k != "score"})


def test_tune_stores_2d_equals_tune_params_on_whole_image(tmp_path, nuclei_pairs):
    probs, labels = nuclei_pairs[0]
    write_ome_zarr(tmp_path / "p.ome.zarr", probs, axes="cyx", spacing=(1.0, 1.0),
                   chunks=(64, 64))
    write_tiff(tmp_path / "t.tif", labels, axes="yx")
    from_store = tune_stores([(tmp_path / "p.ome.zarr", tmp_path / "t.tif")], progress=False)
    whole = tune_params([(probs, labels)], progress=False)
    assert from_store.params == whole.params
    assert (from_store.score, from_store.defaults_score) == (whole.score, whole.defaults_score)
    assert from_store.history == whole.history


def test_tune_stores_3d_equals_tune_params_with_the_store_spacing(tmp_path):
    spacing = (2.0, 1.0, 1.0)
    _, labels = synthetic_nuclei((12, 40, 40), spacing=spacing, seed=4)
    probs = too_wide(labels, seed=4)
    write_ome_zarr(tmp_path / "p.ome.zarr", probs, axes="czyx", spacing=spacing,
                   unit="micrometer", chunks=(8, 32, 32))
    write_tiff(tmp_path / "t.tif", labels.astype(np.uint16), axes="zyx", spacing=spacing)
    search = TuneSearch(steps=(0.05,))
    from_store = tune_stores([(tmp_path / "p.ome.zarr", tmp_path / "t.tif")], search=search,
                             progress=False)
    whole = tune_params([(probs, labels)], spacing=spacing, search=search, progress=False)
    assert from_store.params == whole.params
    assert from_store.history == whole.history
    assert from_store.score > from_store.defaults_score + 0.1


def _straddling_case(tmp_path, *, miss_inside=False):
    """Five discs; the prediction misses the one on row 48 and adds a spurious one
    there (and, with miss_inside, also misses one away from row 48)."""
    shape = (96, 64)
    labels = np.zeros(shape, np.uint16)
    centers = [(20, 14), (20, 48), (48, 32), (76, 14), (76, 48)]
    for i, center in enumerate(centers, start=1):
        labels[disc(shape, center, 6)] = i
    cell = (labels > 0) & (labels != 3)
    cell |= disc(shape, (48, 8), 5)
    if miss_inside:
        cell &= labels != 1
    probs = two_class(cell)
    write_ome_zarr(tmp_path / "p.ome.zarr", probs, axes="cyx", spacing=(1.0, 1.0))
    write_tiff(tmp_path / "t.tif", labels, axes="yx")
    return probs, labels, (tmp_path / "p.ome.zarr", tmp_path / "t.tif")


@pytest.mark.parametrize("miss_inside", [False, True])
def test_tune_stores_leaves_out_objects_cut_by_a_window(tmp_path, miss_inside):
    probs, labels, paths = _straddling_case(tmp_path, miss_inside=miss_inside)
    start = SegmentParams(min_size=0)
    search = TuneSearch(methods=("components",), steps=(0.05,))
    # two windows, rows 0-48 and 48-96: the disc on row 48 is cut, and the spurious
    # one with it; the image's own edges are no cut
    windowed = tune_stores([paths], window=(48, 64), start=start, search=search,
                           progress=False)
    whole = tune_params([(probs, labels)], start=start, search=search, progress=False)
    if miss_inside:
        assert windowed.defaults_score == pytest.approx(3 / 4)  # 3 TP, 1 FN
        assert whole.defaults_score == pytest.approx(3 / 6)  # and the cut pair: 1 FN, 1 FP
    else:
        assert windowed.defaults_score == 1.0
        assert whole.defaults_score == pytest.approx(4 / 6)


def test_window_placement(tmp_path):
    # one object on the left half, three on the right; the prediction misses the left one
    shape = (64, 128)
    labels = np.zeros(shape, np.uint16)
    for i, center in enumerate([(32, 20), (14, 84), (32, 100), (50, 84)], start=1):
        labels[disc(shape, center, 6)] = i
    write_ome_zarr(tmp_path / "p.ome.zarr", two_class(labels > 1), axes="cyx",
                   spacing=(1.0, 1.0))
    write_tiff(tmp_path / "t.tif", labels, axes="yx")
    paths = [(tmp_path / "p.ome.zarr", tmp_path / "t.tif")]
    kwargs = {"window": (64, 64), "windows": 1, "start": SegmentParams(min_size=0),
              "search": TuneSearch(methods=("components",), steps=(0.05,), max_settings=10),
              "progress": False}
    assert tune_stores(paths, placement="objects", **kwargs).defaults_score == 1.0  # right
    assert tune_stores(paths, placement="even", **kwargs).defaults_score == 0.0  # left
    assert window_grid((100, 64), (48, 64)) == [
        (slice(0, 48), slice(0, 64)), (slice(48, 96), slice(0, 64)),
        (slice(52, 100), slice(0, 64))]


def test_tune_stores_refuses_mismatched_truth(tmp_path):
    write_ome_zarr(tmp_path / "p.ome.zarr", two_class(np.zeros((32, 32))), axes="cyx",
                   spacing=(1.0, 1.0))
    write_tiff(tmp_path / "t.tif", np.zeros((32, 30), np.uint16), axes="yx")
    with pytest.raises(InputError, match=r"t\.tif.*\(32, 30\).*\(32, 32\)"):
        tune_stores([(tmp_path / "p.ome.zarr", tmp_path / "t.tif")], progress=False)


def test_progress_counts_settings(nuclei_pairs):
    from unetpipe.core.progress import listening

    seen = []
    with listening(lambda *event: seen.append(event)):
        tune_params(nuclei_pairs[:1], search={"max_settings": 5}, progress=True)
    assert seen[0] == ("tune", 0, 5)
    assert seen[-1] == ("tune", 5, 5)
    assert [done for _, done, _ in seen] == [0, 1, 2, 3, 4, 5]
