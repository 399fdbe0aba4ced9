# Percentile normalisation of every image into a chunked OME-Zarr store, with
# its instance labels (if any) checked and stored as the image-label "gt".


rule preprocess:
    input:
        unpack(preprocess_input),
    output:
        directory(preprocessed("{sample}")),
    log:
        f"{RESULTS}/logs/preprocess/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{sample}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        labels=preprocess_labels_option,
        args=cli_args(config, PREPROCESS_KEYS),
    shell:
        "unetpipe --log {log:q} preprocess {input.image:q} {output:q} {params.labels}"
        " {params.args} --threads {threads}"
