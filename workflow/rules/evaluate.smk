# Scores of the segmentation of every prediction image that has ground truth
# (data.predict.labels), and a summary over them (one row per image, and the
# counts pooled over all). See README.md, "Evaluation metrics".


rule evaluate:
    input:
        labels=labels_store("{sample}"),
        truth=preprocessed("{sample}"),
    output:
        metrics("{sample}"),
    log:
        f"{RESULTS}/logs/evaluate/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{sample}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "unetpipe --log {log:q} evaluate {input.labels:q} {input.truth:q} {output:q}"
        " --sample {wildcards.sample:q} --threads {threads}"


rule summarize:
    input:
        lambda wildcards: [metrics(name) for name in evaluate_names()],
    output:
        SUMMARY,
    log:
        f"{RESULTS}/logs/evaluate/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/summary.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "unetpipe --log {log:q} summarize {output:q} {input:q}"
