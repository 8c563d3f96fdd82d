# Difficulty identification: scatter the pool over shards, one selector forward pass per problem.


rule select_shard:
    input:
        problems=f"{R}/ingest/pool.parquet",
        model=role_input("selector"),
        plan=PREFLIGHT,
    output:
        scores=f"{R}/select/shards/{{scatteritem}}.parquet",
        rejects=f"{R}/select/shards/{{scatteritem}}.rejects.parquet",
    log:
        f"{LOGS}/select/shard_{{scatteritem}}.log",
    benchmark:
        f"{R}/benchmarks/select/select_shard/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=model_arg("selector"),
        settings=lambda w: settings(
            seed=config["seed"],
            engine=engine_settings("selector"),
            select=config["select"],
        ),
    shell:
        "python -m scalediff.select shard --problems {input.problems} --model {params.model}"
        " --shard {wildcards.scatteritem} --output {output.scores} --rejects {output.rejects}"
        " --settings {params.settings:q} > {log} 2>&1"


rule select_gather:
    input:
        scores=gather.select(f"{R}/select/shards/{{scatteritem}}.parquet"),
        rejects=gather.select(f"{R}/select/shards/{{scatteritem}}.rejects.parquet"),
    output:
        scores=f"{R}/select/difficulty.parquet",
        rejects=f"{R}/select/rejects.parquet",
        summary=f"{R}/select/summary.json",
        plot=report(
            f"{R}/select/p_nothink.png",
            caption="report/select_p_nothink.rst",
            category="1. select",
        ),
    log:
        f"{LOGS}/select/gather.log",
    benchmark:
        f"{R}/benchmarks/select/select_gather.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(select=config["select"]),
    shell:
        "python -m scalediff.select gather --shards {input.scores} --shard-rejects {input.rejects}"
        " --output {output.scores} --rejects {output.rejects} --summary {output.summary}"
        " --plot {output.plot} --settings {params.settings:q} > {log} 2>&1"
