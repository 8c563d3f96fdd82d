# Teacher solutions in thinking mode, scattered over shards.


rule distill_shard:
    input:
        generated=at("diffgen", "diffgen/generated.parquet"),
        pool=f"{R}/ingest/pool.parquet",
        model=role_input("teacher"),
        plan=PREFLIGHT,
    output:
        solutions=f"{R}/{{exp}}distill/shards/{{scatteritem}}.parquet",
        rejects=f"{R}/{{exp}}distill/shards/{{scatteritem}}.rejects.parquet",
    log:
        f"{R}/{{exp}}logs/distill/shard_{{scatteritem}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/distill/distill_shard/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=model_arg("teacher"),
        settings=lambda w: settings(
            seed=xconfig(w)["seed"],
            engine=engine_settings("teacher", xconfig(w)),
            distill=xconfig(w)["distill"],
        ),
    shell:
        "python -m scalediff.distill shard --generated {input.generated} --pool {input.pool}"
        " --model {params.model} --shard {wildcards.scatteritem} --output {output.solutions}"
        " --rejects {output.rejects} --settings {params.settings:q} > {log} 2>&1"


rule distill_gather:
    input:
        solutions=gather.distill(
            f"{R}/{{{{exp}}}}distill/shards/{{scatteritem}}.parquet"
        ),
        rejects=gather.distill(
            f"{R}/{{{{exp}}}}distill/shards/{{scatteritem}}.rejects.parquet"
        ),
    output:
        solutions=f"{R}/{{exp}}distill/solutions.parquet",
        rejects=f"{R}/{{exp}}distill/rejects.parquet",
        summary=f"{R}/{{exp}}distill/summary.json",
    log:
        f"{R}/{{exp}}logs/distill/gather.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/distill/distill_gather.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m scalediff.distill gather --shards {input.solutions} --shard-rejects {input.rejects}"
        " --output {output.solutions} --rejects {output.rejects} --summary {output.summary} > {log} 2>&1"
