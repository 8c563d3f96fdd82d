# Teacher solutions in thinking mode, scattered over shards.


rule distill_shard:
    input:
        generated=f"{R}/diffgen/generated.parquet",
        pool=f"{R}/ingest/pool.parquet",
        model=role_input("teacher"),
        plan=PREFLIGHT,
    output:
        solutions=f"{R}/distill/shards/{{scatteritem}}.parquet",
        rejects=f"{R}/distill/shards/{{scatteritem}}.rejects.parquet",
    log:
        f"{LOGS}/distill/shard_{{scatteritem}}.log",
    benchmark:
        f"{R}/benchmarks/distill/distill_shard/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=model_arg("teacher"),
        settings=lambda w: settings(
            seed=config["seed"],
            engine=engine_settings("teacher"),
            distill=config["distill"],
        ),
    shell:
        "python -m scalediff.distill shard --generated {input.generated} --pool {input.pool}"
        " --model {params.model} --shard {wildcards.scatteritem} --output {output.solutions}"
        " --rejects {output.rejects} --settings {params.settings:q} > {log} 2>&1"


rule distill_gather:
    input:
        solutions=gather.distill(f"{R}/distill/shards/{{scatteritem}}.parquet"),
        rejects=gather.distill(f"{R}/distill/shards/{{scatteritem}}.rejects.parquet"),
    output:
        solutions=f"{R}/distill/solutions.parquet",
        rejects=f"{R}/distill/rejects.parquet",
        summary=f"{R}/distill/summary.json",
    log:
        f"{LOGS}/distill/gather.log",
    benchmark:
        f"{R}/benchmarks/distill/distill_gather.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m scalediff.distill gather --shards {input.solutions} --shard-rejects {input.rejects}"
        " --output {output.solutions} --rejects {output.rejects} --summary {output.summary} > {log} 2>&1"
