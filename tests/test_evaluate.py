"""The evaluation stage on real OME-Zarr stores: chunk-wise scores equal the
in-memory ones, uint64 ids, shape checks, the metrics JSON and the summary."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from unetpipe.core.errors import ConfigError, InputError
from unetpipe.io.images import set_multiscale_metadata, write_ome_zarr
from unetpipe.stages.evaluate import evaluate_store, summarize, summary_columns, write_metrics
from unetpipe.stages.metrics import DEFAULT_THRESHOLDS, Scores, pool_scores, score


def write_sample(folder, name, gt, *, chunks):
    """A preprocessed store with ground truth: returns the path of labels/gt."""
    image = np.zeros(gt.shape, np.float32)
    path = write_ome_zarr(folder / f"{name}.ome.zarr", image, axes="zyx"[-gt.ndim:],
                          spacing=(1.0,) * gt.ndim, chunks=chunks, labels={"gt": gt})
    return path / "labels" / "gt"


def write_labels(path, labels, *, chunks):
    """A predicted labels store: one level at array "0", as zarr + NGFF metadata."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array("0", shape=labels.shape, chunks=chunks, dtype=labels.dtype,
                               fill_value=0)
    array[...] = labels
    set_multiscale_metadata(group, axes="zyx"[-labels.ndim:], unit=None,
                            scales=[[1.0] * labels.ndim], kind="nearest")
    return path


def random_labels(rng, shape, n, *, ids=None):
    """Up to n boxes of random size and place; later boxes cover earlier ones."""
    lab = np.zeros(shape, np.int64 if ids is None else np.uint64)
    ids = range(1, n + 1) if ids is None else ids
    for i in ids:
        lo = [int(rng.integers(0, s - 2)) for s in shape]
        hi = [min(s, a + int(rng.integers(2, 9))) for a, s in zip(lo, shape, strict=True)]
        lab[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = i
    return lab


def perturbed(rng, gt, *, offset=0):
    """A prediction: the truth shifted by a pixel, some objects dropped, ids renamed."""
    pred = np.roll(gt, 1, axis=-1)
    ids = np.unique(pred[pred > 0])
    drop = ids[rng.random(ids.size) < 0.2]
    pred[np.isin(pred, drop)] = 0
    return np.where(pred > 0, pred * 3 + offset, 0).astype(gt.dtype)


@pytest.mark.parametrize("ndim", [2, 3])
def test_chunkwise_scores_equal_scores_in_memory(tmp_path, ndim):
    rng = np.random.default_rng(ndim)
    shape = (23, 31) if ndim == 2 else (7, 19, 22)
    gt = random_labels(rng, shape, 40)
    pred = perturbed(rng, gt)
    # chunks that divide neither the shape nor each other
    truth = write_sample(tmp_path, "a", gt, chunks=(7, 5) if ndim == 2 else (3, 7, 5))
    labels = write_labels(tmp_path / "pred.ome.zarr", pred,
                          chunks=(6, 9) if ndim == 2 else (2, 8, 9))
    got = evaluate_store(labels, truth, threads=2)
    assert got == score(gt, pred)
    assert got.n_true == np.unique(gt[gt > 0]).size and got.tp[0] > 0


def test_uint64_ids_beyond_int64(tmp_path):
    rng = np.random.default_rng(7)
    small = random_labels(rng, (30, 26), 25)
    pred_small = perturbed(rng, small)
    # the same objects with huge ids: above 2**40 in the truth, 2**63 in the prediction
    gt = np.where(small > 0, small.astype(np.uint64) + np.uint64(2**40), 0).astype(np.uint64)
    pred = np.where(pred_small > 0, pred_small.astype(np.uint64) + np.uint64(2**63),
                    0).astype(np.uint64)
    truth = write_sample(tmp_path, "big", gt, chunks=(8, 11))
    labels = write_labels(tmp_path / "pred.ome.zarr", pred, chunks=(13, 6))
    got = evaluate_store(labels, truth)
    assert got == score(gt, pred) == score(small, pred_small)
    assert got.tp[0] > 0 and got.n_pred == np.unique(pred_small[pred_small > 0]).size


def test_a_shape_mismatch_names_the_file_and_both_shapes(tmp_path):
    truth = write_sample(tmp_path, "a", np.ones((10, 12), np.uint16), chunks=(5, 5))
    labels = write_labels(tmp_path / "pred.ome.zarr", np.ones((10, 11), np.uint16), chunks=(5, 5))
    with pytest.raises(InputError, match="do not match") as info:
        evaluate_store(labels, truth)
    assert info.value.path == str(labels)
    assert "(10, 11)" in str(info.value) and "(10, 12)" in str(info.value)
    with pytest.raises(InputError, match="not found"):
        evaluate_store(tmp_path / "missing.ome.zarr", truth)


def two_hand_made_samples():
    """Two images with known counts (see the test below)."""
    a_gt = np.zeros((20, 20), np.uint32)
    a_gt[2:6, 2:6], a_gt[10:14, 10:14] = 1, 2
    a_pred = np.zeros_like(a_gt)
    a_pred[2:6, 2:6] = 7        # gt 1 found exactly (IoU 1); gt 2 missed
    a_pred[15:18, 2:5] = 9      # a false positive touching nothing
    b_gt = np.zeros((20, 20), np.uint32)
    b_gt[5:15, 5:15] = 4
    b_pred = np.zeros_like(b_gt)
    b_pred[5:15, 7:17] = 3      # 80 shared pixels of 120: IoU 2/3
    return {"a": (a_gt, a_pred), "b": (b_gt, b_pred)}


def test_metrics_files_and_the_summary_by_hand(tmp_path):
    paths, scores = [], []
    for name, (gt, pred) in two_hand_made_samples().items():
        truth = write_sample(tmp_path / "pre", name, gt, chunks=(6, 7))
        labels = write_labels(tmp_path / f"{name}.labels.ome.zarr", pred, chunks=(9, 4))
        s = evaluate_store(labels, truth)
        scores.append(s)
        out = tmp_path / "eval" / f"{name}.json"
        assert write_metrics(out, s, sample=name,
                             extra={"labels": labels, "truth": truth}) == out
        paths.append(out)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["a.json", "b.json"]
    d = json.loads(paths[0].read_text())
    assert d["sample"] == "a" and d["extra"]["truth"] == str(tmp_path / "pre/a.ome.zarr/labels/gt")
    assert Scores.from_dict(d["scores"]) == scores[0]
    a = d["scores"]["per_threshold"]
    assert [(r["tp"], r["fp"], r["fn"]) for r in a] == [(1, 1, 1)] * 10

    table = summarize(paths, tmp_path / "eval" / "summary.csv")
    assert list(table.columns) == summary_columns()
    assert list(table.columns[10:20]) == [f"ap_{t:.2f}" for t in DEFAULT_THRESHOLDS]
    assert table["sample"].tolist() == ["a", "b", "pooled"]
    pooled = table.iloc[-1]
    # by hand: a gives TP 1, FP 1, FN 1 at every threshold; b one match of IoU 2/3
    assert (pooled["images"], pooled["n_true"], pooled["n_pred"]) == (2, 3, 3)
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (2, 1, 1)
    assert pooled["precision"] == pooled["recall"] == pooled["f1"] == pytest.approx(2 / 3)
    assert pooled["ap_0.50"] == pooled["ap_0.65"] == pytest.approx(2 / 4)
    assert pooled["ap_0.70"] == pooled["ap_0.95"] == pytest.approx(1 / 5)
    assert pooled["mean_ap"] == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)
    assert pooled["panoptic_quality"] == pytest.approx((1 + 2 / 3) / (2 + 0.5 + 0.5))
    assert pooled["mean_matched_iou"] == pytest.approx((1 + 2 / 3) / 2)
    assert pooled["seg"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    # not the mean of the samples' scores: a's AP is 1/3, b's 1 at IoU 0.5
    assert table["ap_0.50"].tolist()[:2] == pytest.approx([1 / 3, 1.0])
    # the pooled row is pool_scores exactly, in the table and in the file
    expected = pool_scores(scores)
    with open(tmp_path / "eval" / "summary.csv", newline="") as f:
        on_disk = list(csv.DictReader(f))
    assert [r["sample"] for r in on_disk] == ["a", "b", "pooled"]
    for row in (pooled, {k: v if k == "sample" else float(v) for k, v in on_disk[-1].items()}):
        assert row["tp"] == 2 and row["images"] == 2
        assert row["mean_ap"] == expected.mean_ap and row["seg"] == expected.seg
        assert row["panoptic_quality"] == expected.panoptic_quality
        assert row["mean_matched_iou"] == expected.mean_matched_iou
        assert [row[f"ap_{t:.2f}"] for t in DEFAULT_THRESHOLDS] == [
            expected.ap(t) for t in DEFAULT_THRESHOLDS]


def test_summary_without_ground_truth_objects_and_bad_inputs(tmp_path):
    empty = np.zeros((4, 4), int)
    one = empty.copy()
    one[1:3, 1:3] = 5
    write_metrics(tmp_path / "e.json", score(empty, one), sample="e")
    table = summarize([tmp_path / "e.json"], tmp_path / "summary.csv")
    assert np.isnan(table["seg"]).all()  # SEG is undefined without true objects
    assert (table["fp"] == 1).all() and (table["ap_0.50"] == 0).all()
    assert pd.read_csv(tmp_path / "summary.csv")["seg"].isna().all()

    write_metrics(tmp_path / "e2.json", score(one, one), sample="e")
    with pytest.raises(InputError, match="'e'"):
        summarize([tmp_path / "e.json", tmp_path / "e2.json"], tmp_path / "summary.csv")
    write_metrics(tmp_path / "t.json", score(one, one, thresholds=[0.5]), sample="t")
    with pytest.raises(InputError, match="thresholds"):
        summarize([tmp_path / "e.json", tmp_path / "t.json"], tmp_path / "summary.csv")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match=r"bad\.json"):
        summarize([tmp_path / "bad.json"], tmp_path / "summary.csv")
    with pytest.raises(ConfigError, match="pooled"):
        write_metrics(tmp_path / "p.json", score(one, one), sample="pooled")
    with pytest.raises(ValueError, match="no metrics"):
        summarize([], tmp_path / "summary.csv")
