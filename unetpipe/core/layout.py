"""The results layout: which file of which sample lives where.

This is its one definition. The workflow's rules (``workflow/rules/common.smk``),
the napari reader, review and the report take their paths from here::

    {results}/preprocessed/{sample}.ome.zarr   image (labels/gt: its ground truth)
    {results}/targets/{sample}.zarr            training targets and weights
    {results}/model/checkpoint_best.pt         the trained model (and checkpoint_last.pt,
                                               history.csv, training_curves.png)
    {results}/probabilities/{sample}.ome.zarr  class probabilities
    {results}/labels/{sample}.ome.zarr         instance labels (and review files)
    {results}/tables/{sample}.csv              one row per object
    {results}/metrics/{sample}.json            scores; metrics/summary.csv
    {results}/report/                          the report's figures and tables
    {results}/logs/, {results}/benchmarks/     one file per job
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

STORES = {"preprocessed": ".ome.zarr", "probabilities": ".ome.zarr", "targets": ".zarr",
          "labels": ".ome.zarr"}
"""The stage folders that hold one Zarr store per sample, and the stores' suffixes
(in the order the napari reader adds their layers)."""

SUFFIX = {**STORES, "tables": ".csv", "metrics": ".json"}
"""Every per-sample stage folder and the suffix of its files."""

MODEL_DIR = "model"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_LAST = "checkpoint_last.pt"
HISTORY = "history.csv"
CURVES = "training_curves.png"
TUNED = "checkpoint_tuned.pt"
"""The trained model with the tuned segmentation settings in it (rule tune)."""
SEGMENT_PARAMS = "segment_params.yaml"
"""The tuned segmentation settings as YAML (rule tune)."""
SUMMARY = "summary.csv"
REPORT_DIR = "report"


def stage_path(results: str | os.PathLike, stage: str, sample: str) -> str:
    """The file or store of ``sample`` written by ``stage`` below ``results``.

    Examples
    --------
    >>> stage_path("results", "labels", "a")
    'results/labels/a.ome.zarr'
    """
    return f"{os.fspath(results)}/{stage}/{sample}{SUFFIX[stage]}"


def model_path(results: str | os.PathLike, name: str = CHECKPOINT_BEST) -> str:
    """A file of the trained model's folder (``checkpoint_best.pt`` by default)."""
    return f"{os.fspath(results)}/{MODEL_DIR}/{name}"


@dataclass(frozen=True)
class SamplePaths:
    """Where the files of one segmented sample live, below a results folder."""

    results: Path
    sample: str

    def _stage(self, stage: str) -> Path:
        return Path(stage_path(self.results, stage, self.sample))

    @property
    def labels(self) -> Path:
        return self._stage("labels")

    @property
    def table(self) -> Path:
        return self._stage("tables")

    @property
    def image(self) -> Path:
        return self._stage("preprocessed")

    @property
    def probabilities(self) -> Path:
        return self._stage("probabilities")

    @property
    def review(self) -> Path:
        return self.labels.parent / f"{self.sample}.review.json"

    @property
    def versions(self) -> Path:
        return self.labels.parent / f"{self.sample}.versions"

    @property
    def journal(self) -> Path:
        return self.labels.parent / f".{self.labels.name}.journal"

    @property
    def lock(self) -> Path:
        return self.labels.parent / f".{self.sample}.lock"


def sample_paths(results: str | os.PathLike, sample: str) -> SamplePaths:
    """The paths of ``sample`` below the results folder ``results``."""
    return SamplePaths(Path(os.fspath(results)), sample)


def list_samples(results: str | os.PathLike) -> list[str]:
    """Samples with a label store in ``results/labels``, sorted.

    Raises
    ------
    InputError
        When the folder has no ``labels/*.ome.zarr`` (not a results folder,
        or nothing segmented yet).
    """
    folder, suffix = Path(os.fspath(results)) / "labels", SUFFIX["labels"]
    names = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")
                   if not p.name.startswith(".") and p.is_dir()) if folder.is_dir() else []
    if not names:
        raise InputError(os.fspath(results), "holds no segmentation results "
                                             "(no labels/*.ome.zarr); run the workflow first")
    return names
