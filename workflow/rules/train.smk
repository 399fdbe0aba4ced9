# Training the U-Net on the training images' targets and weight maps,
# validated on the validation images (AP at IoU 0.5).
#
# checkpoint_last.pt is deliberately not a declared output: Snakemake removes
# the declared outputs of a failed or killed job, and the last checkpoint is
# what a restarted run (`snakemake --rerun-incomplete`) resumes from. The
# command resumes only when the settings and data are unchanged.


rule train:
    input:
        images=[preprocessed(name) for name in train_names()],
        targets=[targets_store(name) for name in train_names()],
        val=[preprocessed(name) for name in val_names()],
        init=[INIT_MODEL] if INIT_MODEL else [],
    output:
        best=MODEL,
        history=layout.model_path(RESULTS, layout.HISTORY),
        curves=report(
            layout.model_path(RESULTS, layout.CURVES),
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        f"{RESULTS}/logs/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/train.tsv"
    conda:
        ENV
    threads: 8
    resources:
        mem_mb=8000,
        runtime=train_runtime(),
        gpu=1,
    params:
        out=lambda wildcards, output: os.path.dirname(output.best),
        args=cli_args(config, TRAIN_KEYS, qualified=TRAIN_QUALIFIED),
        val=lambda wildcards, input: (
            "--val-images " + " ".join(shlex.quote(v) for v in input.val) if input.val else ""
        ),
    shell:
        "unetpipe --log {log:q} train {params.out:q} --train-images {input.images:q}"
        " --train-targets {input.targets:q} {params.val} {params.args} --threads {threads}"
