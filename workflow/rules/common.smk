# Config validation and the sample table. Everything here runs when Snakemake
# parses the workflow, before any job: a bad config stops the run at once.

import json
import os
import re
import shlex
import sys

from snakemake.io import strip_wildcard_constraints
from snakemake.utils import min_version, validate

min_version("8.20")

# The Snakefile needs only the package's light modules (config, samples);
# take them from this checkout, so they match the rules even where the
# package is not installed (jobs then run in workflow/envs/unetpipe.yaml).
sys.path.insert(0, workflow.basedir)

from unetpipe.cli import (  # noqa: E402
    DASK_SLURM_KEYS,
    PREDICT_KEYS,
    PREPROCESS_KEYS,
    SEGMENT_KEYS,
    SYNTH_KEYS,
    TARGETS_KEYS,
    TRAIN_KEYS,
    TRAIN_QUALIFIED,
    TUNE_KEYS,
)
from unetpipe.nn.models import named_model  # noqa: E402
from unetpipe.core import layout  # noqa: E402
from unetpipe.core.config import cli_args, coerce_strings, validate_config  # noqa: E402
from unetpipe.core.errors import ConfigError  # noqa: E402
from unetpipe.inputs.demo import demo_files  # noqa: E402
from unetpipe.inputs.samples import sample_table  # noqa: E402

try:
    # --config values arrive as strings; our validator names a bad key in one
    # line; Snakemake's validate then records the schema for its own tooling.
    config.update(validate_config(coerce_strings(config)))
    validate(config, "../schemas/config.schema.yaml", set_default=True)
    SAMPLES = sample_table(config)
except ConfigError as e:
    sys.exit("\n".join(f"unetpipe: {line}" for line in str(e).splitlines()))

RESULTS = config["results"]
ENV = "../envs/unetpipe.yaml"
# the checkout ENV installs the package from (pip expands it there)
os.environ.update(UNETPIPE_SOURCE=workflow.basedir)


wildcard_constraints:
    sample="|".join(map(re.escape, SAMPLES)),


def preprocessed(name):
    return layout.stage_path(RESULTS, "preprocessed", name)


def preprocess_input(wildcards):
    sample = SAMPLES[wildcards.sample]
    files = {"image": sample.image}
    if sample.labels:
        files["labels"] = sample.labels
    return files


def preprocess_labels_option(wildcards, input):
    return f"--labels {shlex.quote(input.labels)}" if "labels" in input.keys() else ""


def train_names():
    """Samples the network is trained on (training images, curated data included)."""
    return [name for name, s in SAMPLES.items() if "train" in s.roles]


def val_names():
    """Samples training is validated on."""
    return [name for name, s in SAMPLES.items() if "val" in s.roles and "train" not in s.roles]


def targets_store(name):
    return layout.stage_path(RESULTS, "targets", name)


def train_runtime():
    """Minutes a cluster should allow the training job: its budget plus set-up and validation."""
    minutes = config["train"]["minutes"]
    return int(minutes * 1.5 + 30) if minutes else 24 * 60


MODEL = layout.model_path(RESULTS)
TUNED_MODEL = layout.model_path(RESULTS, layout.TUNED)
SEGMENT_PARAMS = layout.model_path(RESULTS, layout.SEGMENT_PARAMS)


def tuning():
    """Whether the workflow tunes the model it trains (rule tune)."""
    return bool(config["tune"]["enabled"] and train_names() and not config["predict"]["checkpoint"])


# the checkpoint prediction uses: a given one (starter: the package's file), or
# the one the workflow trains (tuned, so that its probability stores carry the
# tuned settings)
CHECKPOINT = named_model(config["predict"]["checkpoint"]) or (TUNED_MODEL if tuning() else MODEL)
# the weights training starts from (train.init), a file the train rule depends on
INIT_MODEL = named_model(config["train"]["init"])


def predict_names():
    """Samples to segment."""
    return [name for name, s in SAMPLES.items() if "predict" in s.roles]


def probabilities(name):
    return layout.stage_path(RESULTS, "probabilities", name)


def predict_runtime():
    """Minutes a cluster should allow a prediction job (it resumes if cut short)."""
    return 4 * 60


def remote_workers(stage):
    """Whether a stage's blocks run on Dask workers elsewhere (worker jobs of a
    SLURMCluster, or a running dask.distributed scheduler), so that its own
    job only drives them: one core, modest memory, no GPU."""
    cfg = config[stage]
    return cfg["scheduler"] == "slurm" or (
        cfg["scheduler"] == "distributed" and bool(cfg["address"])
    )


def dask_slurm_args(stage):
    """The dask_slurm options, for a stage that uses a SLURMCluster."""
    return cli_args(config, DASK_SLURM_KEYS) if config[stage]["scheduler"] == "slurm" else ""


def labels_store(name):
    return layout.stage_path(RESULTS, "labels", name)


def table(name):
    return layout.stage_path(RESULTS, "tables", name)


def metrics(name):
    return layout.stage_path(RESULTS, "metrics", name)


SUMMARY = f"{RESULTS}/metrics/{layout.SUMMARY}"


def evaluate_names():
    """Samples to segment that have ground truth and were not trained on."""
    return [
        name
        for name in predict_names()
        if SAMPLES[name].labels and "train" not in SAMPLES[name].roles
    ]


REPORT = f"{RESULTS}/{layout.REPORT_DIR}"
RUNTIMES = [f"{REPORT}/runtimes.html", f"{REPORT}/runtimes.png"]


def overlay(name):
    return f"{REPORT}/overlays/{name}.png"


def weightmap_sample():
    """The training sample the report's weight-map figure shows (None without training)."""
    names = train_names()
    return names[0] if names and not config["predict"]["checkpoint"] else None


def report_inputs(wildcards):
    """A sample's overlay inputs: its labels, and its metrics when it is evaluated."""
    files = {"image": preprocessed(wildcards.sample), "labels": labels_store(wildcards.sample)}
    if wildcards.sample in evaluate_names():
        files["metrics"] = metrics(wildcards.sample)
    return files


def report_options(wildcards, input):
    """The ground truth (in the preprocessed store) and metrics of an overlay, if any."""
    options = []
    if SAMPLES[wildcards.sample].labels:
        options.append(f"--truth {shlex.quote(os.path.join(input.image, 'labels', 'gt'))}")
    if "metrics" in input.keys():
        options.append(f"--metrics {shlex.quote(input.metrics)}")
    return " ".join(options)


def benchmark_templates():
    """RULE=PATH of every rule's benchmark file, so the runtime table names rules
    exactly (summarize writes to benchmarks/evaluate/, for one)."""
    # without the wildcard constraints, which list every sample name
    return [
        f"{r.name}={strip_wildcard_constraints(str(r.benchmark))}"
        for r in workflow.rules
        if r.benchmark
    ]


def all_outputs(*, runtimes=True):
    outputs = [preprocessed(name) for name in SAMPLES]
    if train_names() and not config["predict"]["checkpoint"]:
        outputs.append(MODEL)
    if tuning():
        outputs += [TUNED_MODEL, f"{REPORT}/tune.html"]
    if train_names() or config["predict"]["checkpoint"]:
        outputs += [labels_store(name) for name in predict_names()]
        outputs += [table(name) for name in predict_names()]
        outputs += [overlay(name) for name in predict_names()]
        if evaluate_names():
            outputs += [SUMMARY, f"{REPORT}/metrics.html"]
    if weightmap_sample():
        outputs.append(f"{REPORT}/weightmap.png")
    outputs.append(f"{REPORT}/config.html")
    # the runtime table comes last: it needs the benchmark files of all other jobs
    return outputs + RUNTIMES if runtimes else outputs
