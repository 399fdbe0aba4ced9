# The built-in demo: synthetic nuclei with exact instance labels. Used when a
# data path in the config points inside demo.dir.

DEMO = config["demo"]


rule demo_data:
    output:
        demo_files(
            DEMO["dir"], n_train=DEMO["n_train"], n_val=DEMO["n_val"], n_predict=DEMO["n_predict"]
        ),
    log:
        f"{RESULTS}/logs/demo_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        args=cli_args(config, SYNTH_KEYS),
    shell:
        "unetpipe --log {log:q} synth {params.args}"
