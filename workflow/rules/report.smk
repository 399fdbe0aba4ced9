# Items of `snakemake --report report.html`: a gallery of outlines per
# segmented sample, the weight-map figure, the evaluation table, runtime and
# memory per rule, and the config. They are ordinary outputs (all_outputs),
# so `snakemake --cores N` makes them and the report needs nothing more.
# The figures read a coarse pyramid level and one crop, never a whole stack.


rule report_overlay:
    input:
        unpack(report_inputs),
    output:
        report(
            overlay("{sample}"),
            caption="../report/overlay.rst",
            category="Segmentation",
            subcategory="Outlines",
            labels={"sample": "{sample}", "figure": "outlines"},
        ),
    log:
        f"{RESULTS}/logs/report/overlay/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/overlay/{{sample}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        options=report_options,
    shell:
        "unetpipe --log {log:q} report overlay {input.image:q} {input.labels:q} {output:q}"
        " --sample {wildcards.sample:q} {params.options}"


rule report_weightmap:
    input:
        targets=lambda wildcards: targets_store(weightmap_sample()),
        image=lambda wildcards: preprocessed(weightmap_sample()),
    output:
        report(
            f"{REPORT}/weightmap.png",
            caption="../report/weightmap.rst",
            category="Training",
            subcategory="Weight map",
            labels={"figure": "weight map"},
        ),
    log:
        f"{RESULTS}/logs/report/weightmap.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/weightmap.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        sample=weightmap_sample(),
    shell:
        "unetpipe --log {log:q} report weightmap {input.targets:q} {input.image:q} {output:q}"
        " --sample {params.sample:q}"


rule report_metrics:
    input:
        SUMMARY,
    output:
        report(
            f"{REPORT}/metrics.html",
            caption="../report/metrics.rst",
            category="Evaluation",
            labels={"table": "scores"},
        ),
    log:
        f"{RESULTS}/logs/report/metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/metrics.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "unetpipe --log {log:q} report metrics {input:q} {output:q}"


rule report_config:
    output:
        report(
            f"{REPORT}/config.html",
            caption="../report/config.rst",
            category="Configuration",
            labels={"file": "config"},
        ),
    log:
        f"{RESULTS}/logs/report/config.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/config.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        # the config itself: a changed config makes the page again
        config=json.dumps(config, default=str),
    shell:
        "unetpipe --log {log:q} report config {output:q} --json {params.config:q}"


rule report_runtimes:
    input:
        # every other final output, so that their jobs' benchmark files exist
        lambda wildcards: all_outputs(runtimes=False),
    output:
        html=report(
            RUNTIMES[0],
            caption="../report/runtimes.rst",
            category="Runtime and memory",
            labels={"item": "table"},
        ),
        png=report(
            RUNTIMES[1],
            caption="../report/runtimes.rst",
            category="Runtime and memory",
            labels={"item": "chart"},
        ),
    log:
        f"{RESULTS}/logs/report/runtimes.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/runtimes.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        benchmarks=lambda wildcards: f"{RESULTS}/benchmarks",
        rules=lambda wildcards: benchmark_templates(),
    shell:
        "unetpipe --log {log:q} report runtimes {params.benchmarks:q} {output.html:q}"
        " {output.png:q} --rule {params.rules:q}"
