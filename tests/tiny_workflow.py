"""The tiny demo configuration and the Snakemake runner that the workflow,
review and cluster tests share."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the demo, as small as it goes: two 64 x 64 training images, six iterations
TINY = {
    "demo": {"n_train": 2, "n_val": 1, "n_predict": 1, "train_shape": [64, 64],
             "predict_shape": [160, 128]},
    "preprocess": {"chunks": [64, 64], "pyramid_levels": 1},
    "model": {"depth": 2, "features": 4},
    "train": {"iterations": 6, "val_every": 3, "patch": [32, 32], "batch_size": 2,
              "minutes": None},
}


def snakemake(workdir, *args, config=None, timeout=600):
    """Run the repository's workflow in ``workdir`` as a user would."""
    import yaml

    cfg = Path(workdir) / "config.yaml"
    if config is not None:
        cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    # the rules call the `unetpipe` command of this environment
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
         str(workdir), "--configfile", str(cfg), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def job_table(out):
    """Snakemake's "Job stats" table as {rule: count}."""
    start = out.index("Job stats:")
    table = {}
    for line in out[start:].splitlines()[3:]:
        if not line.strip():
            break
        name, count = line.split()
        table[name] = int(count)
    return table
