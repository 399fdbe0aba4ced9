"""Instance segmentation from probabilities: the methods, and chunked stitching."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal
from segment_data import (
    assert_same_up_to_relabelling,
    probabilities_from_labels,
    write_probabilities,
)

from unetpipe.core.cluster import Execution
from unetpipe.core.errors import ConfigError, InputError
from unetpipe.inputs.synth import synthetic_nuclei
from unetpipe.io.images import read_labels
from unetpipe.io.resume import DONE_DIR, markers, partial_path
from unetpipe.stages import segment as seg
from unetpipe.stages.instances import SegmentParams, fill_holes, segment_array
from unetpipe.stages.metrics import score
from unetpipe.stages.segment import segment_store
from unetpipe.stages.weights import targets_for_mode


def hard_labels_2d():
    """Nuclei, plus objects built to cross blocks of 37 x 29: long bars over
    many blocks, squares on block corners, a ring with a hole on a corner."""
    _, labels = synthetic_nuclei((260, 230), seed=5)
    labels = labels.astype(np.int64)
    top = labels.max()
    labels[97:107] = 0
    labels[100:104, 5:225] = top + 1                  # a bar over 8 blocks
    labels[108:258, 147:156] = 0
    labels[110:255, 150:153] = top + 2                # a bar over 5 blocks the other way
    for k, (y, x) in enumerate([(74, 58), (111, 87), (185, 203)]):
        labels[y - 3:y + 3, x - 3:x + 3] = top + 3 + k  # centred on block corners
    yy, xx = np.mgrid[:260, :230]
    r = np.hypot(yy - 148, xx - 116)
    labels[(r >= 4) & (r < 9)] = top + 10              # a ring on a corner, hole of 49 px
    labels[(r < 4)] = 0
    return labels


def test_components_regrows_the_separation_ring():
    _, labels = synthetic_nuclei((256, 256), seed=1)
    for mode in ("two_class", "three_class"):
        t = targets_for_mode(labels, mode)
        p = np.stack([(t == c).astype(np.float32) for c in range(2 if mode == "two_class"
                                                                 else 3)])
        components = SegmentParams(method="components", foreground=0.5, min_size=0)
        grown = score(labels, segment_array(p, params=components))
        bare = score(labels, segment_array(p, params=replace(components, grow=0)))
        assert grown.ap(0.5) >= 0.99 and grown.mean_matched_iou > 0.98, mode
        # without growing back, the objects lack their ring
        assert bare.mean_matched_iou < grown.mean_matched_iou - 0.04, mode


def test_segment_array_on_a_hand_made_case():
    # two touching 4x4 squares (three-class targets), a 1-pixel speck
    labels = np.zeros((8, 14), int)
    labels[2:6, 1:5] = 1
    labels[2:6, 5:9] = 2
    labels[4, 12] = 3
    t = targets_for_mode(labels, "three_class")
    p = np.stack([(t == c).astype(np.float32) for c in range(3)])
    components = SegmentParams(method="components", foreground=0.5, min_size=0)
    out = segment_array(p, params=components)
    # the speck has no interior: no seed; the squares come back whole but for
    # the gap's two ends on the outline, which the foreground's closing (a
    # cross) does not fill
    expected = np.where(labels == 3, 0, labels)
    expected[[2, 2, 5, 5], [4, 5, 4, 5]] = 0
    assert_same_up_to_relabelling(expected, out)
    # each has 14 pixels, 3.5 um^2 at a spacing of 0.5 um
    half = (0.5, 0.5)
    for key, value, n in [("min_size", 3.5, 2), ("min_size", 3.6, 0), ("max_size", 3.5, 2),
                          ("max_size", 3.4, 0)]:
        params = replace(components, **{key: value})
        assert segment_array(p, params=params, spacing=half).max() == n


def test_fill_holes_fills_enclosed_background_only():
    labels = np.zeros((9, 12), int)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0                     # a hole in 1
    labels[1:6, 6:11] = 2
    labels[3, 6] = 0                     # a gap between 1 and 2: not a hole
    labels[2:5, 8:10] = 0                # a hole of 3 x 2 = 6 px in 2
    out = fill_holes(labels)
    assert out[3, 3] == 1 and out[3, 6] == 0 and (out[2:5, 8:10] == 2).all()
    assert fill_holes(labels, max_size=5)[3, 8] == 0   # too big
    assert fill_holes(labels, max_size=6)[3, 8] == 2
    assert fill_holes(labels, max_extent=(2, 2))[3, 8] == 0  # too wide
    assert fill_holes(labels, max_extent=(3, 2))[3, 8] == 2
    assert (fill_holes(labels)[labels > 0] == labels[labels > 0]).all()


@pytest.mark.parametrize("mode", ["two_class", "three_class"])
def test_components_chunked_equals_whole_image_2d(tmp_path, mode):
    labels = hard_labels_2d()
    p = probabilities_from_labels(labels, mode)
    params = SegmentParams(method="components", threshold=0.5, foreground=0.5, min_size=30,
                           fill_holes=60)
    store = write_probabilities(tmp_path / "p.ome.zarr", p, chunks=(50, 50))
    whole = segment_array(p, params=params, halo=(16, 16))
    assert whole.max() > 60
    for block in [(37, 29), (260, 230), (64, 300)]:
        out = tmp_path / f"l{block[0]}.ome.zarr"
        result = segment_store(store, out, params=params, block=block,
                               execution=Execution(threads=2, progress=False))
        chunked = zarr.open_array(str(out / "0"))[:]
        assert_same_up_to_relabelling(whole, chunked)
        assert result.objects == whole.max()
        if block == (37, 29):
            assert result.merges > 50
            blocky = chunked
    # objects over more than two blocks each way came through whole
    for y, x, axis in [(101, 60, 1), (180, 151, 0)]:
        extent = np.flatnonzero((blocky == blocky[y, x]).any(axis=1 - axis))
        assert extent[-1] - extent[0] > 3 * (37, 29)[axis]
    # the ring's hole on a block corner is filled
    assert blocky[148, 116] != 0 and blocky[148, 116] == blocky[148, 123]


def test_components_chunked_equals_whole_image_3d(tmp_path):
    spacing = (2.0, 0.5, 0.5)
    _, labels = synthetic_nuclei((24, 70, 60), spacing=spacing, seed=2)
    labels = labels.astype(np.int64)
    labels[2:22, 30:33, 20:23] = labels.max() + 1   # through every z block
    labels[12:15, 5:65, 41:44] = labels.max() + 1   # along y
    p = probabilities_from_labels(labels, "three_class", sigma=0.7)
    params = SegmentParams(method="components", threshold=0.5, foreground=0.5, min_size=4.0,
                           fill_holes=2.0)
    store = write_probabilities(tmp_path / "p.ome.zarr", p, spacing=list(spacing),
                                chunks=(7, 20, 20))
    whole = segment_array(p, params=params, spacing=spacing, halo=(16, 16, 16))
    assert whole.max() > 10
    out = tmp_path / "l.ome.zarr"
    result = segment_store(store, out, params=params, block=(5, 17, 13),
                           execution=Execution(threads=2, progress=False))
    chunked = zarr.open_array(str(out / "0"))[:]
    assert_same_up_to_relabelling(whole, chunked)
    assert result.merges > 20 and result.blocks == 5 * 5 * 5
    lab = read_labels(out)
    assert lab.spacing == spacing and lab.unit == "micrometer" and lab.axes == "zyx"


@pytest.mark.parametrize("seeds", ["classes", "distance"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_watershed_chunked_matches_whole_image(tmp_path, seeds, ndim):
    if ndim == 2:
        _, labels = synthetic_nuclei((300, 280), seed=7)
        block, spacing = (64, 50), None
    else:
        spacing = (1.0, 0.5, 0.5)
        _, labels = synthetic_nuclei((30, 90, 80), spacing=spacing, seed=7)
        block = (11, 30, 27)
    p = probabilities_from_labels(labels, "three_class")
    params = SegmentParams(method="watershed", seeds=seeds, h=1.0)
    store = write_probabilities(tmp_path / "p.ome.zarr", p,
                                spacing=list(spacing) if spacing else None)
    whole = segment_array(p, params=params, spacing=spacing)
    segment_store(store, tmp_path / "l.ome.zarr", params=params, block=block,
                  execution=Execution(threads=2, progress=False))
    chunked = zarr.open_array(str(tmp_path / "l.ome.zarr" / "0"))[:]
    s = score(whole, chunked)
    assert s.n_true > 20
    assert s.f1(0.5) >= 0.99, s.to_dict()["per_threshold"][0]


def test_ids_switch_to_uint64_when_uint32_runs_out(tmp_path, monkeypatch):
    _, labels = synthetic_nuclei((120, 100), seed=3)
    p = probabilities_from_labels(labels)
    store = write_probabilities(tmp_path / "p.ome.zarr", p)
    a = segment_store(store, tmp_path / "a.ome.zarr", block=(40, 40),
                      execution=Execution(progress=False))
    monkeypatch.setattr(seg, "UINT32_MAX", a.objects - 1)
    b = segment_store(store, tmp_path / "b.ome.zarr", block=(40, 40),
                      execution=Execution(progress=False))
    assert (a.dtype, b.dtype) == ("uint32", "uint64")
    la, lb = (zarr.open_array(str(tmp_path / n / "0")) for n in ("a.ome.zarr", "b.ome.zarr"))
    assert (la.dtype, lb.dtype) == (np.uint32, np.uint64)
    assert_array_equal(la[:], lb[:])


def test_a_killed_segmentation_resumes(tmp_path, monkeypatch, caplog):
    labels = hard_labels_2d()
    p = probabilities_from_labels(labels)
    params = SegmentParams(method="components", threshold=0.5, foreground=0.5, fill_holes=60)
    store = write_probabilities(tmp_path / "p.ome.zarr", p)
    expected = segment_array(p, params=params)
    out = tmp_path / "l.ome.zarr"
    original = seg._relabel_blocks
    calls = []

    def dies_in_pass_4(job, indices, *args):
        calls.append(indices)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(job, indices, *args)

    monkeypatch.setattr(seg, "_relabel_blocks", dies_in_pass_4)
    with pytest.raises(KeyboardInterrupt):
        segment_store(store, out, params=params, block=(60, 50),
                      execution=Execution(threads=1, progress=False))
    partial = partial_path(out)
    # the relabelling table is chunked: one chunk per block, read block by block
    table = zarr.open_array(str(partial / seg.WORK_DIR / "relabel"))
    assert table.shape[0] == 5 * 5 and table.chunks == (1, table.shape[1])
    assert not out.exists()
    written = set(markers(partial / DONE_DIR))
    assert len([m for m in written if m[0] == 4]) == 5  # relabelled before the kill
    calls.clear()

    def counts(job, indices, *args):
        calls.append(indices)
        return original(job, indices, *args)

    monkeypatch.setattr(seg, "_relabel_blocks", counts)
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        result = segment_store(store, out, params=params, block=(60, 50),
                               execution=Execution(threads=1, progress=False))
    assert "resuming" in caplog.text and result.resumed == 25
    assert len(calls) == 25 - 5  # only the blocks not relabelled before
    assert_same_up_to_relabelling(expected, zarr.open_array(str(out / "0"))[:])
    assert not partial.exists()
    # a partial store made with other settings is not used
    monkeypatch.setattr(seg, "_relabel_blocks", dies_in_pass_4)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        segment_store(store, out, params=params, block=(60, 50),
                      execution=Execution(threads=1, progress=False))
    monkeypatch.setattr(seg, "_relabel_blocks", original)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        result = segment_store(store, out, params=replace(params, min_size=40), block=(60, 50),
                               execution=Execution(threads=1, progress=False))
    assert "starting afresh" in caplog.text and "params" in caplog.text
    assert result.resumed == 0


def test_bad_inputs_and_settings(tmp_path):
    p = np.full((4, 20, 20), 0.25, np.float32)
    store = write_probabilities(tmp_path / "p.ome.zarr", p)
    with pytest.raises(InputError, match=r"p.ome.zarr.*2 .*or 3.*got 4"):
        segment_store(store, tmp_path / "l.ome.zarr", execution=Execution(progress=False))
    with pytest.raises(InputError, match="not found"):
        segment_store(tmp_path / "missing.ome.zarr", tmp_path / "l.ome.zarr",
                      execution=Execution(progress=False))
    store = write_probabilities(tmp_path / "q.ome.zarr", p[:3])
    with pytest.raises(ConfigError, match=r"segment\.block"):
        segment_store(store, tmp_path / "l.ome.zarr", block=(8, 8, 8),
                      execution=Execution(progress=False))
    with pytest.raises(ConfigError, match=r"segment\.method"):
        segment_store(store, tmp_path / "l.ome.zarr", params=SegmentParams(method="x"))
    with pytest.raises(ConfigError, match=r"segment\.max_size"):
        SegmentParams(min_size=10, max_size=5).check()
    assert not (tmp_path / "l.ome.zarr").exists()


def test_segment_evaluate_summarize_commands(tmp_path, capsys):
    import json

    import pandas as pd

    from unetpipe.cli import main
    from unetpipe.io.images import write_ome_zarr

    spacing = (0.5, 0.5)
    image, labels = synthetic_nuclei((150, 130), spacing=spacing, seed=4)
    pre = write_ome_zarr(tmp_path / "s.ome.zarr", image.astype(np.float32)[None], axes="cyx",
                         spacing=spacing, unit="micrometer", labels={"gt": labels})
    p = probabilities_from_labels(labels)
    store = write_probabilities(tmp_path / "p.ome.zarr", p, spacing=list(spacing))
    out, table = tmp_path / "l.ome.zarr", tmp_path / "t.csv"
    assert main(["-q", "segment", str(store), str(out), "--table", str(table), "--image",
                 str(pre), "--block", "64", "48", "--min-size", "5", "--method", "components"]) == 0
    expected = segment_array(p, params=SegmentParams(method="components", min_size=5),
                             spacing=spacing)
    assert_same_up_to_relabelling(expected, zarr.open_array(str(out / "0"))[:])
    rows = pd.read_csv(table)
    assert list(rows["label"]) == list(range(1, expected.max() + 1))
    sizes = np.bincount(zarr.open_array(str(out / "0"))[:].ravel())[1:]
    np.testing.assert_allclose(rows["area"], sizes * 0.25)
    assert rows["n_chunks"].max() > 1 and rows["touches_border"].any()
    metrics = tmp_path / "m" / "s.json"
    assert main(["-q", "evaluate", str(out), str(pre), str(metrics)]) == 0
    saved = json.loads(metrics.read_text())
    reference = score(labels, expected)
    assert saved["sample"] == "l"
    assert saved["scores"]["per_threshold"][0]["tp"] == reference.counts(0.5)[0]
    assert saved["scores"]["mean_ap"] == pytest.approx(reference.mean_ap)
    again = tmp_path / "m" / "t.json"
    assert main(["-q", "evaluate", str(out), str(pre), str(again), "--sample", "t"]) == 0
    summary = tmp_path / "m" / "summary.csv"
    assert main(["-q", "summarize", str(summary), str(metrics), str(again)]) == 0
    rows = pd.read_csv(summary)
    assert list(rows["sample"]) == ["l", "t", "pooled"]
    assert rows["n_true"].iloc[-1] == 2 * reference.n_true
    assert rows["ap_0.50"].iloc[-1] == pytest.approx(reference.ap(0.5))
    # a preprocessed store without ground truth: one line naming it
    bare = write_ome_zarr(tmp_path / "bare.ome.zarr", image.astype(np.float32)[None],
                          axes="cyx", spacing=spacing, unit="micrometer",
                          attrs={"low": [0.0], "high": [1.0]})
    capsys.readouterr()
    assert main(["evaluate", str(out), str(bare), str(tmp_path / "m" / "x.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bare.ome.zarr" in err[0] and "labels/gt" in err[0]
    # a bad store: one line, exit 1, no output
    bad = write_probabilities(tmp_path / "bad.ome.zarr", np.full((4, 9, 9), 0.25, np.float32))
    capsys.readouterr()
    assert main(["segment", str(bad), str(tmp_path / "x.ome.zarr")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.ome.zarr" in err[0] and not (tmp_path / "x.ome.zarr").exists()


def test_halos_wider_than_blocks_reach_blocks_further_away(tmp_path):
    # one disk whose seed is far from most of it: growth and flooding reach
    # over several blocks of 10 x 10 (a halo of 16 or 32 spans 2 to 4 blocks)
    yy, xx = np.mgrid[:60, :60]
    r = np.hypot(yy - 30, xx - 30)
    p = np.zeros((2, 60, 60), np.float32)
    p[1] = np.where(r < 3, 0.9, np.where(r < 20, 0.45, 0.0))
    p[0] = 1 - np.where(r < 20, 0.9, 0.0)
    store = write_probabilities(tmp_path / "p.ome.zarr", p)
    for params, halo in [(SegmentParams(method="watershed", min_size=0), (32, 32)),
                         (SegmentParams(method="components", grow=15, min_size=0), (16, 16))]:
        whole = segment_array(p, params=params, halo=halo)
        out = tmp_path / f"{params.method}.ome.zarr"
        segment_store(store, out, params=params, block=(10, 10), halo=halo,
                      execution=Execution(progress=False))
        assert whole.max() == 1
        assert_same_up_to_relabelling(whole, zarr.open_array(str(out / "0"))[:])


def test_a_halo_too_small_for_the_method_is_refused(tmp_path):
    p = probabilities_from_labels(synthetic_nuclei((40, 40), seed=1)[1])
    store = write_probabilities(tmp_path / "p.ome.zarr", p)
    with pytest.raises(ConfigError, match=r"segment\.halo.*at least 3"):
        segment_store(store, tmp_path / "l.ome.zarr", halo=(2, 2),
                      execution=Execution(progress=False))
    with pytest.raises(ConfigError, match=r"segment\.halo.*at least 6"):
        segment_store(store, tmp_path / "l.ome.zarr", halo=(16, 5),
                      params=SegmentParams(method="components", grow=5),
                      execution=Execution(progress=False))
