"""Cluster execution against a real single-node SLURM (tests/slurm_cluster.py):
the workflow through Snakemake's SLURM executor plugin with the repository's
profile, prediction and segmentation on a Dask cluster of SLURM worker jobs
(dask-jobqueue), and a SLURM prediction job cancelled mid-run that a rerun
completes from its recorded blocks."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr
from tiny_workflow import TINY as TINY_BASE

from unetpipe.core.cluster import Execution
from unetpipe.io.images import write_ome_zarr
from unetpipe.io.resume import DONE_DIR, partial_path
from unetpipe.nn.model import UNet
from unetpipe.stages.instances import SegmentParams
from unetpipe.stages.predict import predict_store
from unetpipe.stages.segment import segment_store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# the tiny demo of the workflow tests
TINY = {
    **TINY_BASE,
    # two blocks per axis, so segmentation stitches
    "predict": {"block": [64, 64]},
    "segment": {"threshold": 0.35, "block": [96, 64]},
}


def _checkpoint(path, *, features=4):
    """A random network saved as training saves one (BatchNorm statistics
    randomised, so eval mode is not the identity)."""
    from unetpipe.nn.checkpoint import FORMAT, VERSION, save_checkpoint

    torch.manual_seed(0)
    model = UNet(ndim=2, depth=2, features=features, out_channels=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint({"format": FORMAT, "version": VERSION, "iteration": 1,
                     "model": {"class": "UNet", "config": model.config,
                               "state_dict": model.state_dict()},
                     "targets": {"mode": "three_class"},
                     "data": {"ndim": 2, "channels": 1, "spacing": [1.0, 1.0], "unit": None}},
                    path)
    return path


def _image(path, shape, seed=0):
    """Blobs on a noisy background, so segmentation finds objects."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    image = ndi.gaussian_filter(rng.random(shape), 3)
    image = ((image - image.min()) / np.ptp(image)).astype(np.float32)[None]
    write_ome_zarr(path, image, axes="cyx", spacing=(1.0, 1.0), chunks=(64, 64))
    return path


def _array(store, path="0"):
    return np.asarray(zarr.open_array(os.path.join(store, path), mode="r")[...])


def _env(cluster):
    """The cluster's client environment, with this Python's commands first."""
    return dict(cluster.env, PATH=os.path.dirname(sys.executable) + os.pathsep
                + cluster.env.get("PATH", ""))


# --- Snakemake's SLURM executor with the repository's profile ---------------------------


def _test_profile(cluster, folder):
    """workflow/profiles/slurm for this one-node cluster: its partition, no
    GPUs (the node has none: the profile's gpu requests become 0), at most
    the node's CPUs and half its memory per job, logs kept, status checks
    every few seconds. Jobs get one thread (the rules' threads are capped),
    so that two of them share this small node."""
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in ("train", "predict"):  # the profile asks for GPUs where they are used
        assert profile["set-resources"][rule]["gpu"] == 1
    memory = int(cluster.resources["RealMemory"]) // 2
    for resources in [profile.get("default-resources", {}),
                      *profile.get("set-resources", {}).values()]:
        if "slurm_partition" in resources:
            resources["slurm_partition"] = cluster.partition
        if "gpu" in resources:
            resources["gpu"] = 0
        for key in ("gpu_model", "gres"):
            resources.pop(key, None)
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = 1
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], memory)
    profile.update({"max-threads": 1, "jobs": 4, "retries": 0,
                    "slurm-keep-successful-logs": True,
                    "slurm-init-seconds-before-status-checks": 2})
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _snakemake(workdir, *args, env, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
         str(workdir), "--configfile", str(workdir / "config.yaml"), *args],
        capture_output=True, text=True, env=env, timeout=timeout)


def test_workflow_runs_every_job_on_slurm_and_matches_a_local_run(slurm, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for workdir in (on_slurm, local):
        workdir.mkdir()
    (on_slurm / "config.yaml").write_text(yaml.safe_dump(TINY))
    profile = _test_profile(slurm, tmp_path / "profile")
    memory = int(slurm.resources["RealMemory"]) // 2
    env = _env(slurm)
    t0 = time.monotonic()
    proc = _snakemake(on_slurm, "--workflow-profile", str(profile),
                      "--slurm-status-command", "squeue", env=env)
    minutes = (time.monotonic() - t0) / 60
    out = proc.stdout + proc.stderr
    job_logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in
                         (on_slurm / ".snakemake/slurm_logs").rglob("*.log"))
    assert proc.returncode == 0, out[-6000:] + job_logs + slurm.logs()

    # every job but the local rules (all, summarize, the report's tables) went to SLURM: its id is
    # in Snakemake's output, its log under .snakemake/slurm_logs/rule_*/, and
    # squeue still knows it as completed
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out))
    rule_of = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(local)?rule (\w+):", block)
        job = re.search(r"\n\s+jobid: (\d+)", block)
        if m and job:
            rule_of[job.group(1)] = (m.group(2), bool(m.group(1)))
    on_cluster = sorted(rule for job, (rule, is_local) in rule_of.items() if not is_local)
    assert sorted(rule_of[j][0] for j in submitted) == on_cluster
    assert sorted(set(on_cluster)) == ["demo_data", "evaluate", "predict", "preprocess",
                                       "report_overlay", "report_weightmap", "segment",
                                       "targets", "train", "tune"]
    assert len(submitted) == 14, submitted  # 20 jobs, less the 6 local rules
    logs = {p.stem: p for p in (on_slurm / ".snakemake/slurm_logs").rglob("*.log")}
    states = {j["id"]: j["state"] for j in slurm.jobs()}
    for job, slurm_id in submitted.items():
        rule = rule_of[job][0]
        assert slurm_id in logs and f"rule_{rule}" in logs[slurm_id].parts, (rule, slurm_id)
        assert states.get(slurm_id) == "COMPLETED", (rule, slurm_id, states.get(slurm_id))
    # SLURM gave the train and predict jobs the profile's CPUs and memory
    for job, slurm_id in submitted.items():
        if rule_of[job][0] in ("train", "predict"):
            info = slurm.job_info(slurm_id)
            assert info["NumCPUs"] == "1" and info["MinMemoryNode"] == f"{memory}M", info
    res = on_slurm / "results"
    assert (res / "metrics/summary.csv").is_file()

    # the same workflow here, predicting with the checkpoint trained (and tuned) on SLURM
    checkpoint = res / "model/checkpoint_tuned.pt"
    (local / "config.yaml").write_text(yaml.safe_dump(
        {**TINY, "predict": {**TINY["predict"], "checkpoint": str(checkpoint)}}))
    proc = _snakemake(local, "--workflow-profile", str(ROOT / "workflow/profiles/local"),
                      "--cores", "2", env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "SLURM jobid" not in proc.stdout + proc.stderr
    there, here = res, local / "results"
    # one torch thread on the SLURM job's CPU, two here: the same to float rounding
    np.testing.assert_allclose(_array(here / "probabilities/predict_000.ome.zarr"),
                               _array(there / "probabilities/predict_000.ome.zarr"), atol=1e-6)
    labels = _array(here / "labels/predict_000.ome.zarr")
    assert labels.max() > 1
    np.testing.assert_array_equal(labels, _array(there / "labels/predict_000.ome.zarr"))
    pd.testing.assert_frame_equal(pd.read_csv(here / "tables/predict_000.csv"),
                                  pd.read_csv(there / "tables/predict_000.csv"))
    print(f"SLURM run: {len(submitted)} jobs in {minutes:.1f} min")


# --- a Dask cluster of SLURM worker jobs ------------------------------------------------


def test_dask_slurm_cluster_predicts_and_segments_like_the_threaded_scheduler(slurm,
                                                                              tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt")
    image = _image(tmp_path / "in.ome.zarr", (256, 192))
    logs = tmp_path / "workers"
    logs.mkdir()
    settings = {"jobs": 2, "cores": 1, "memory": "2GB", "walltime": "00:10:00",
                "queue": slurm.partition, "local_directory": str(tmp_path / "scratch"),
                "job_extra_directives": [f"--output={logs}/worker-%j.log"]}
    # probabilities with objects to segment: blobs of the image as cells
    blobs = _array(image)[0]
    cell = np.clip((blobs - 0.45) * 4, 0, 1).astype(np.float32)
    probs = tmp_path / "probs.ome.zarr"
    write_ome_zarr(probs, np.stack([1 - cell, cell, np.zeros_like(cell)]), axes="cyx",
                   spacing=(1.0, 1.0), chunks=(64, 48))
    params = SegmentParams(method="watershed", threshold=0.6, foreground=0.3, min_size=0)
    before = {j["id"] for j in slurm.jobs()}
    os.environ["SLURM_CONF"] = slurm.env["SLURM_CONF"]  # the cluster's sbatch/scancel
    try:
        on_slurm = predict_store(ckpt, image, tmp_path / "slurm.ome.zarr", block=(32, 32),
                                 execution=Execution(threads=2, workers=2, scheduler="slurm", dask_slurm=settings, progress=False))
        labels_slurm = segment_store(probs, tmp_path / "ls.ome.zarr", params=params,
                                     block=(64, 48),
                                     execution=Execution(scheduler="slurm", dask_slurm=settings, progress=False))
    finally:
        os.environ.pop("SLURM_CONF")
    reference = predict_store(ckpt, image, tmp_path / "ref.ome.zarr", block=(32, 32),
                              execution=Execution(threads=2, workers=2, progress=False))
    assert on_slurm.computed == reference.computed == 48 and on_slurm.device == "cpu"
    # the same to float rounding (the torch threads of a worker job may differ)
    np.testing.assert_allclose(_array(tmp_path / "slurm.ome.zarr"),
                               _array(tmp_path / "ref.ome.zarr"), atol=1e-6)
    labels_ref = segment_store(probs, tmp_path / "lr.ome.zarr", params=params, block=(64, 48),
                               execution=Execution(threads=2, progress=False))
    assert labels_slurm.objects == labels_ref.objects > 3 and labels_ref.blocks == 16
    np.testing.assert_array_equal(_array(tmp_path / "ls.ome.zarr"),
                                  _array(tmp_path / "lr.ome.zarr"))
    # the blocks ran in worker jobs: two per stage, each a SLURM job whose
    # Dask worker joined the scheduler
    workers = [j for j in slurm.jobs() if j["id"] not in before and j["name"] == "unetpipe-dask"]
    assert len(workers) >= 4, workers
    joined = [p for p in logs.glob("worker-*.log") if "Registered to" in p.read_text()]
    assert len(joined) >= 4, [p.read_text()[-2000:] for p in logs.glob("*.log")]


# --- a SLURM job cancelled mid-run --------------------------------------------------------


def test_cancelled_slurm_predict_job_resumes_only_the_missing_blocks(slurm, tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt", features=8)
    image = _image(tmp_path / "in.ome.zarr", (640, 512))
    out = tmp_path / "out.ome.zarr"
    n_blocks = 20 * 16

    def script(log):
        return ("#!/bin/bash\n"
                f"exec {sys.executable} -m unetpipe -q --log {log} predict {ckpt} {image} "
                f"{out} --block 32 32 --threads 1 --workers 1\n")

    first = slurm.sbatch(script(tmp_path / "1.log"), "-c", "1", "--mem", "2000", "-t", "10",
                         "-o", str(tmp_path / "slurm-%j.out"), cwd=tmp_path)
    markers = partial_path(out) / DONE_DIR
    deadline = time.monotonic() + 180
    while not (markers.is_dir() and len(os.listdir(markers)) >= n_blocks // 3):
        assert slurm.job_state(first) in ("PENDING", "RUNNING"), (
            slurm.job_state(first), (tmp_path / "1.log").read_text())
        assert time.monotonic() < deadline, "the SLURM job made no progress"
        time.sleep(0.05)
    subprocess.run(["scancel", first], env=slurm.env, check=True, timeout=30)
    assert slurm.wait_job(first, 60) == "CANCELLED"
    time.sleep(1)
    done = len(os.listdir(markers))
    assert n_blocks // 3 <= done < n_blocks and not out.exists()

    # the rerun, as SLURM's requeue or Snakemake's --rerun-incomplete does it
    second = slurm.sbatch(script(tmp_path / "2.log"), "-c", "1", "--mem", "2000", "-t", "10",
                          "-o", str(tmp_path / "slurm-%j.out"), cwd=tmp_path)
    assert slurm.wait_job(second, 300) == "COMPLETED", (tmp_path / "2.log").read_text()
    log = (tmp_path / "2.log").read_text()
    assert (f"{n_blocks} blocks ({n_blocks - done} computed, 0 skipped as empty, "
            f"{done} done before)") in log, log
    reference = predict_store(ckpt, image, tmp_path / "ref.ome.zarr", block=(32, 32),
                              execution=Execution(threads=1, workers=1, progress=False))
    assert reference.computed == n_blocks
    np.testing.assert_array_equal(_array(out), _array(tmp_path / "ref.ome.zarr"))
    print(f"cancelled after {done} of {n_blocks} blocks; the rerun computed "
          f"{n_blocks - done}")
