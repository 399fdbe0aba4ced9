# Calibrating the segmentation settings to the data: the trained model
# predicts the validation images (or, without any, the training images or
# the slab of the single training image that training held out), and the
# settings that score best against their labels (tune.objective) are stored
# in checkpoint_tuned.pt and segment_params.yaml. Prediction uses the tuned
# checkpoint, so its probability stores carry the settings, and segment
# takes them for every segment setting the config leaves at null.


rule tune:
    input:
        checkpoint=MODEL,
        val=[preprocessed(name) for name in val_names()],
        train=[] if val_names() else [preprocessed(name) for name in train_names()],
    output:
        checkpoint=TUNED_MODEL,
        params=SEGMENT_PARAMS,
    log:
        f"{RESULTS}/logs/tune.log",
    benchmark:
        f"{RESULTS}/benchmarks/tune.tsv"
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        args=cli_args(config, TUNE_KEYS),
        stores=lambda wildcards, input: " ".join(
            [
                f"--val-images {' '.join(map(shlex.quote, input.val))}" if input.val else "",
                f"--train-images {' '.join(map(shlex.quote, input.train))}" if input.train else "",
            ]
        ),
    shell:
        "unetpipe --log {log:q} tune {input.checkpoint:q} {output.checkpoint:q}"
        " --params {output.params:q} {params.stores} {params.args} --threads {threads}"


rule report_tune:
    input:
        SEGMENT_PARAMS,
    output:
        report(
            f"{REPORT}/tune.html",
            caption="../report/tune.rst",
            category="Training",
            labels={"table": "tuned segmentation"},
        ),
    log:
        f"{RESULTS}/logs/report/tune.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/tune.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "unetpipe --log {log:q} report tune {input:q} {output:q}"
