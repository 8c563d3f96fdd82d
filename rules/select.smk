# Difficulty identification: scatter the pool over shards, one selector forward pass per problem.


rule select_shard:
    input:
        problems=f"{R}/ingest/pool.parquet",
        model=role_input("selector"),
        plan=PREFLIGHT,
    output:
        scores=f"{R}/{{exp}}select/shards/{{scatteritem}}.parquet",
        rejects=f"{R}/{{exp}}select/shards/{{scatteritem}}.rejects.parquet",
    log:
        f"{R}/{{exp}}logs/select/shard_{{scatteritem}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/select/select_shard/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=model_arg("selector"),
        settings=lambda w: settings(
            seed=xconfig(w)["seed"],
            engine=engine_settings("selector", xconfig(w)),
            select=xconfig(w)["select"],
        ),
    shell:
        "python -m scalediff.select shard --problems {input.problems} --model {params.model}"
        " --shard {wildcards.scatteritem} --output {output.scores} --rejects {output.rejects}"
        " --settings {params.settings:q} > {log} 2>&1"


rule select_gather:
    input:
        scores=gather.select(f"{R}/{{{{exp}}}}select/shards/{{scatteritem}}.parquet"),
        rejects=gather.select(
            f"{R}/{{{{exp}}}}select/shards/{{scatteritem}}.rejects.parquet"
        ),
    output:
        scores=f"{R}/{{exp}}select/difficulty.parquet",
        rejects=f"{R}/{{exp}}select/rejects.parquet",
        summary=f"{R}/{{exp}}select/summary.json",
        plot=report(
            f"{R}/{{exp}}select/p_nothink.png",
            caption="report/select_p_nothink.rst",
            category="1. select",
        ),
    log:
        f"{R}/{{exp}}logs/select/gather.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/select/select_gather.tsv"
    conda:
        CONDA_ENV
    params:
        random=lambda w: (
            "--random-subset" if xconfig(w)["select"].get("random_subset") else ""
        ),
        settings=lambda w: settings(
            seed=xconfig(w)["seed"], select=xconfig(w)["select"]
        ),
    shell:
        "python -m scalediff.select gather --shards {input.scores} --shard-rejects {input.rejects}"
        " --output {output.scores} --rejects {output.rejects} --summary {output.summary}"
        " --plot {output.plot} {params.random} --settings {params.settings:q} > {log} 2>&1"
