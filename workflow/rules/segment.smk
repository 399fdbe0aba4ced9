# Instance labels of every prediction image, from its class probabilities:
# block by block with a halo, objects merged across blocks, consecutive ids;
# and a table of per-object measurements.
#
# Resume: like predict, the command builds the label store as the hidden
# {RESULTS}/labels/.{sample}.ome.zarr.partial (not a declared output, so a
# failed or killed job leaves it), records every finished block in it, and
# a rerun does only the missing blocks. With segment.scheduler slurm the
# per-block passes run on the Dask worker jobs of dask_slurm, and this job
# drives them (and measures the objects, chunk by chunk).


rule segment:
    input:
        probabilities=probabilities("{sample}"),
        image=preprocessed("{sample}"),
    output:
        labels=directory(labels_store("{sample}")),
        table=table("{sample}"),
    log:
        f"{RESULTS}/logs/segment/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{sample}}.tsv"
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        args=cli_args(config, SEGMENT_KEYS),
        cluster=dask_slurm_args("segment"),
    shell:
        "unetpipe --log {log:q} segment {input.probabilities:q} {output.labels:q}"
        " --table {output.table:q} --image {input.image:q} {params.args} {params.cluster}"
        " --threads {threads}"
