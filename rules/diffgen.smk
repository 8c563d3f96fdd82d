# DiffGen: fine-tune the generator base on difficult problems (QFT), then sample new problems.


rule diffgen_train:
    input:
        problems=f"{R}/ingest/pool.parquet",
        difficulty=at("select", "select/difficulty.parquet"),
        model=role_input("generator_base"),
        plan=PREFLIGHT,
    output:
        model=directory(f"{R}/{{exp}}diffgen/model"),
        loss=f"{R}/{{exp}}diffgen/loss.csv",
        summary=f"{R}/{{exp}}diffgen/train_summary.json",
    log:
        f"{R}/{{exp}}logs/diffgen/train.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/diffgen/diffgen_train.tsv"
    conda:
        CONDA_ENV
    resources:
        **train_resources(config["diffgen"]["train"]),
    params:
        launch=launcher(config["diffgen"]["train"]),
        base=model_arg("generator_base"),
        settings=lambda w: settings(diffgen={"train": xconfig(w)["diffgen"]["train"]}),
    shell:
        "{params.launch} scalediff.diffgen train --problems {input.problems} --difficulty {input.difficulty}"
        " --base-model {params.base} --output {output.model} --loss-csv {output.loss}"
        " --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"


rule diffgen_sample:
    input:
        model=at("diffgen_train", "diffgen/model"),
        plan=PREFLIGHT,
    output:
        problems=f"{R}/{{exp}}diffgen/samples/{{scatteritem}}.parquet",
        rejects=f"{R}/{{exp}}diffgen/samples/{{scatteritem}}.rejects.parquet",
    log:
        f"{R}/{{exp}}logs/diffgen/sample_{{scatteritem}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/diffgen/diffgen_sample/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(
            seed=xconfig(w)["seed"],
            engine=engine_settings("generator", xconfig(w)),
            diffgen={"sample": xconfig(w)["diffgen"]["sample"]},
        ),
    shell:
        "python -m scalediff.diffgen sample --model {input.model} --shard {wildcards.scatteritem}"
        " --output {output.problems} --rejects {output.rejects} --settings {params.settings:q} > {log} 2>&1"


rule diffgen_gather:
    input:
        problems=gather.diffgen(
            f"{R}/{{{{exp}}}}diffgen/samples/{{scatteritem}}.parquet"
        ),
        rejects=gather.diffgen(
            f"{R}/{{{{exp}}}}diffgen/samples/{{scatteritem}}.rejects.parquet"
        ),
    output:
        problems=f"{R}/{{exp}}diffgen/generated.parquet",
        rejects=f"{R}/{{exp}}diffgen/rejects.parquet",
        summary=f"{R}/{{exp}}diffgen/summary.json",
    log:
        f"{R}/{{exp}}logs/diffgen/gather.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/diffgen/diffgen_gather.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m scalediff.diffgen gather --shards {input.problems} --shard-rejects {input.rejects}"
        " --output {output.problems} --rejects {output.rejects} --summary {output.summary} > {log} 2>&1"


rule select_generated_shard:
    # The selector scores the generated problems too (the paper: ~88% difficult vs ~34% of the
    # pool): ~2M problems at paper scale, so it is a sharded GPU stage like select.
    input:
        problems=at("diffgen", "diffgen/generated.parquet"),
        model=role_input("selector"),
        plan=PREFLIGHT,
    output:
        scores=f"{R}/{{exp}}select/generated/shards/{{scatteritem}}.parquet",
        rejects=f"{R}/{{exp}}select/generated/shards/{{scatteritem}}.rejects.parquet",
    log:
        f"{R}/{{exp}}logs/select/generated_shard_{{scatteritem}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/select/select_generated_shard/{{scatteritem}}.tsv"
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


rule select_generated_gather:
    input:
        scores=gather.select_generated(
            f"{R}/{{{{exp}}}}select/generated/shards/{{scatteritem}}.parquet"
        ),
        rejects=gather.select_generated(
            f"{R}/{{{{exp}}}}select/generated/shards/{{scatteritem}}.rejects.parquet"
        ),
    output:
        scores=f"{R}/{{exp}}select/generated/difficulty.parquet",
        rejects=f"{R}/{{exp}}select/generated/rejects.parquet",
        summary=f"{R}/{{exp}}select/generated/summary.json",
        plot=report(
            f"{R}/{{exp}}select/generated/p_nothink.png",
            caption="report/select_generated_p_nothink.rst",
            category="1. select",
        ),
    log:
        f"{R}/{{exp}}logs/select/generated_gather.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/select/select_generated_gather.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(select=xconfig(w)["select"]),
    shell:
        "python -m scalediff.select gather --shards {input.scores} --shard-rejects {input.rejects}"
        " --output {output.scores} --rejects {output.rejects} --summary {output.summary}"
        " --plot {output.plot} --settings {params.settings:q} > {log} 2>&1"
