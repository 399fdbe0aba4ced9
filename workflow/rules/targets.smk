# Training targets (separation gaps between touching cells) and the U-Net
# paper's weight map, for every training and validation image.


rule targets:
    input:
        preprocessed("{sample}"),
    output:
        directory(targets_store("{sample}")),
    log:
        f"{RESULTS}/logs/targets/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/targets/{{sample}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        args=cli_args(config, TARGETS_KEYS),
    shell:
        "unetpipe --log {log:q} targets {input:q} {output:q} {params.args} --threads {threads}"
