"""Figures and tables of the Snakemake report (unetpipe.report.figures), and the report itself."""

import html
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from skimage.segmentation import find_boundaries

from unetpipe.cli import main
from unetpipe.io.images import write_ome_zarr
from unetpipe.report import figures as report


def _disks(shape, centres, radius):
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.indices(shape)
    for i, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = i
    return labels


# --- arrays -------------------------------------------------------------------------


def test_overlay_colours_exactly_the_outline_pixels():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (40, 50))
    labels = _disks((40, 50), [(10, 10), (10, 21), (30, 35)], 6)  # two touching
    rgb = report.overlay_rgb(image, labels)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.float32
    outline = find_boundaries(labels, mode="inner")
    assert (rgb[outline] == report.PRED_COLOUR).all()
    rest = rgb[~outline]
    np.testing.assert_array_equal(rest[:, 0], rest[:, 1])  # grey elsewhere
    np.testing.assert_array_equal(rest[:, 0], rest[:, 2])
    np.testing.assert_allclose(rest[:, 0], 0.8 * report.normalize_gray(image)[~outline])


def test_overlay_with_truth_colours_each_outline_and_their_agreement():
    image = np.zeros((40, 50))
    pred = _disks((40, 50), [(10, 10), (30, 35)], 6)
    truth = _disks((40, 50), [(10, 10), (30, 30)], 6)  # the first object agrees
    rgb = report.overlay_rgb(image, pred, truth)
    p, t = find_boundaries(pred, mode="inner"), find_boundaries(truth, mode="inner")
    assert (rgb[p & t] == report.BOTH_COLOUR).all() and (p & t).sum() > 20
    assert (rgb[p & ~t] == report.PRED_COLOUR).all()
    assert (rgb[t & ~p] == report.TRUTH_COLOUR).all()
    assert (rgb[~(p | t)] == 0).all()


def test_best_window_equals_brute_force():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 3, (23, 31)).astype(float)
    for size in [(5, 7), (1, 1), (23, 4), (40, 40)]:
        h, w = min(size[0], 23), min(size[1], 31)
        sums = np.array([[score[y:y + h, x:x + w].sum() for x in range(31 - w + 1)]
                         for y in range(23 - h + 1)])
        y, x = np.unravel_index(np.argmax(sums), sums.shape)
        assert report.best_window(score, size) == (y, x)
    assert report.best_window(np.zeros((8, 8)), (3, 3)) == (0, 0)


def test_border_from_weights_removes_the_class_weights():
    targets = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    weights = np.array([[0.5 + 3, 2.0, 6.0], [6.0 + 1, 2.0, 0.5]], np.float32)
    np.testing.assert_allclose(report.border_from_weights(targets, weights, [0.5, 2.0, 6.0]),
                               [[3, 0, 0], [1, 0, 0]])


# --- tables -------------------------------------------------------------------------

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(
        f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t0\t{cpu}\n" for s, rss, cpu in rows))


def test_runtime_table_sums_and_maxima_of_the_benchmark_files(tmp_path):
    root = tmp_path / "benchmarks"
    _bench(root / "preprocess/a.tsv", [(1.5, 100.0, 1.0)])
    _bench(root / "preprocess/b.tsv", [(2.25, 300.5, 2.0)])
    _bench(root / "preprocess/c.tsv", [(4.0, "NA", 3.5)])  # memory not measured
    _bench(root / "train.tsv", [(10.0, 500.0, 20.0)])
    _bench(root / "evaluate/x.tsv", [(1.0, 50.0, 0.5)])
    _bench(root / "evaluate/summary.tsv", [(0.25, 40.0, 0.1)])
    _bench(root / "repeated.tsv", [(1.0, 10.0, 1.0), (3.0, 30.0, 3.0)])  # repeat(): the mean
    templates = {"evaluate": f"{root}/evaluate/{{sample}}.tsv",
                 "summarize": f"{root}/evaluate/summary.tsv"}
    runs = report.read_benchmarks(root, templates)
    assert sorted(runs["rule"]) == ["evaluate", "preprocess", "preprocess", "preprocess",
                                    "repeated", "summarize", "train"]
    table = report.runtime_table(runs).set_index("rule")
    assert list(table.index) == ["train", "preprocess", "repeated", "evaluate", "summarize"]
    pre = table.loc["preprocess"]
    assert pre["jobs"] == 3 and pre["wall_s"] == pytest.approx(7.75)
    assert pre["max_wall_s"] == 4.0 and pre["cpu_s"] == pytest.approx(6.5)
    assert pre["peak_rss_mb"] == 300.5
    assert table.loc["repeated", "wall_s"] == 2.0 and table.loc["repeated", "peak_rss_mb"] == 20
    assert table.loc["summarize", "jobs"] == 1 and table.loc["evaluate", "wall_s"] == 1.0
    page = report.runtime_html(report.runtime_table(runs))
    # the total row: all jobs, wall times added, the largest peak
    total = re.search(r'<tr class="total">(.*?)</tr>', page).group(1)
    assert re.findall(r">([^<]*)</td>", total) == ["all rules", "7", "21.0", "10.0", "29.1",
                                                    "500.0"]


def test_rule_of_falls_back_to_the_folder_or_file_name(tmp_path):
    assert report.rule_of(tmp_path / "b/preprocess/x.tsv", tmp_path / "b") == "preprocess"
    assert report.rule_of(tmp_path / "b/train.tsv", tmp_path / "b") == "train"
    assert report.rule_of("r/b/report/overlay/s1.tsv", "r/b",
                          {"report_overlay": "r/b/report/overlay/{sample}.tsv"}) == (
        "report_overlay")


def test_metrics_page_defines_every_column_and_bolds_the_pooled_row():
    from unetpipe.stages.evaluate import summary_columns

    cols = summary_columns()
    rows = [{c: (name if c == "sample" else 1 if c in ("images", "tp") else 0.5) for c in cols}
            for name in ("img1", "pooled")]
    page = report.metrics_html(pd.DataFrame(rows, columns=cols))
    for c in cols:
        if not c.startswith("ap_"):
            assert f"<dt>{c}</dt>" in page
    assert "<dt>ap_0.50 ... ap_0.95</dt>" in page
    assert page.count("<dt>") == len(cols) - 9
    assert '<tr class="total"><td>pooled</td><td class="num">1</td>' in page
    assert '<td class="num">0.500</td>' in page


def test_config_page_holds_the_config_as_yaml(tmp_path):
    cfg = {"train": {"iterations": 6, "patch": [32, 32]}, "results": "out<&>"}
    page = report.config_html(cfg)
    text = html.unescape(re.search(r"<pre>(.*)</pre>", page, re.S).group(1))
    assert yaml.safe_load(text) == cfg
    out = tmp_path / "c.html"
    assert main(["-q", "report", "config", str(out), "--json",
                 '{"train": {"iterations": 6, "patch": [32, 32]}, "results": "out<&>"}']) == 0
    assert out.read_text() == page
    assert main(["-q", "report", "config", str(out), "--json", "[1"]) == 1


# --- reading stores -------------------------------------------------------------------


def _png_shape(path):
    import matplotlib.pyplot as plt

    return plt.imread(path).shape


def test_overlay_and_weightmap_figures_from_stores(tmp_path):
    from unetpipe.stages.targets import write_targets

    shape = (300, 260)
    centres = [(y, x) for y in range(20, 300, 40) for x in range(20, 260, 40)]
    truth = _disks(shape, centres, 15)
    rng = np.random.default_rng(2)
    image = (truth > 0) + 0.1 * rng.standard_normal(shape)
    store = write_ome_zarr(tmp_path / "s.ome.zarr", image[None].astype(np.float32), axes="cyx",
                           spacing=(1, 1), chunks=(64, 64), levels=2, labels={"gt": truth})
    labels = write_ome_zarr(tmp_path / "labels.ome.zarr", truth.astype(np.uint32), axes="yx",
                            spacing=(1, 1), chunks=(64, 64), attrs={"objects": len(centres)})
    out = tmp_path / "o.png"
    assert main(["-q", "report", "overlay", str(store), str(labels), str(out), "--truth",
                 f"{store}/labels/gt", "--crop", "64"]) == 0
    assert _png_shape(out)[:2] == (580, 1040)  # two panels: whole image, crop
    write_targets(store, tmp_path / "t.zarr", mode="three_class", progress=False)
    out = tmp_path / "w.png"
    assert main(["-q", "report", "weightmap", str(tmp_path / "t.zarr"), str(store),
                 str(out)]) == 0
    assert _png_shape(out)[:2] == (500, 1300)


def test_overlay_of_a_stack_shows_its_middle_plane(tmp_path):
    truth = np.stack([_disks((40, 48), [(20, 24)], 4 + z) for z in range(6)])
    store = write_ome_zarr(tmp_path / "s.ome.zarr", truth[None].astype(np.float32),
                           axes="czyx", spacing=(2, 1, 1), chunks=(3, 32, 32), levels=1)
    labels = write_ome_zarr(tmp_path / "l.ome.zarr", truth.astype(np.uint32), axes="zyx",
                            spacing=(2, 1, 1), chunks=(3, 32, 32))
    out = report.write_overlay(store, labels, tmp_path / "o.png", crop=32, sample="stack")
    assert _png_shape(out)[:2] == (580, 1040)


# --- the report of a workflow run ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.workflow
def test_tiny_run_then_snakemake_report_holds_every_item(tmp_path):
    from tiny_workflow import TINY, snakemake

    run = snakemake(tmp_path, "--cores", "2", config={**TINY, "segment": {"threshold": 0.35}})
    assert run.returncode == 0, run.stderr
    proc = snakemake(tmp_path, "--report", "report.zip")
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        files = {name.rsplit("/", 1)[-1]: z.read(name) for name in z.namelist()
                 if "/data/raw/" in name}
        assert "report/report.html" in z.namelist()
    assert sorted(files) == ["config.html", "metrics.html", "predict_000.png", "runtimes.html",
                             "runtimes.png", "training_curves.png", "tune.html",
                             "weightmap.png"]
    assert all(len(data) > 1000 for data in files.values())
    runtimes = files["runtimes.html"].decode()
    for rule in ("demo_data", "preprocess", "targets", "train", "tune", "predict", "segment",
                 "evaluate", "summarize", "report_overlay", "report_weightmap",
                 "report_metrics", "report_config"):
        assert f"<td>{rule}</td>" in runtimes
    config = files["config.html"].decode()
    assert "iterations: 6" in config and "predict_shape:\n  - 160\n  - 128" in config
    assert "<td>pooled</td>" in files["metrics.html"].decode()
    tune = files["tune.html"].decode()
    assert "<th>built-in default</th><th>tuned</th>" in tune and "<td>mean_ap</td>" in tune
