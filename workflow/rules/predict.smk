# Class probabilities of every prediction image: overlap-tile inference
# block by block (the output chunks), each from the block plus a halo that
# covers the network's receptive field, so blocks join without seams.
#
# Resume: the command builds the store as the hidden
# {RESULTS}/probabilities/.{sample}.ome.zarr.partial, which is not a declared
# output, so Snakemake does not remove it when the job fails or is killed
# (it removes only declared outputs). Every finished block is recorded in
# it; a rerun (`snakemake --rerun-incomplete`, or the SLURM job requeued)
# predicts only the missing blocks and renames the store to the declared
# output when all are done.
#
# Resources: the job needs a GPU and the cores that feed it; with
# predict.scheduler slurm (or a remote dask.distributed scheduler) it only
# drives Dask workers elsewhere, which get their GPUs through dask_slurm.


rule predict:
    input:
        image=preprocessed("{sample}"),
        checkpoint=CHECKPOINT,
    output:
        directory(probabilities("{sample}")),
    log:
        f"{RESULTS}/logs/predict/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{sample}}.tsv"
    conda:
        ENV
    threads: 1 if remote_workers("predict") else 8
    resources:
        mem_mb=4000 if remote_workers("predict") else 8000,
        runtime=predict_runtime(),
        gpu=0 if remote_workers("predict") else 1,
    params:
        args=cli_args(config, PREDICT_KEYS),
        cluster=dask_slurm_args("predict"),
    shell:
        "unetpipe --log {log:q} predict {input.checkpoint:q} {input.image:q} {output:q}"
        " {params.args} {params.cluster} --threads {threads}"
