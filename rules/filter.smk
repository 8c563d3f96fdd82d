# Filter: rule-based checks + decontamination + dedup, then the student-base model-based filter
# (scattered over shards), then the dataset, rejects, funnel and card.


rule filter_rules:
    input:
        solutions=f"{R}/distill/solutions.parquet",
        pool=f"{R}/ingest/pool.parquet",
        benchmarks=[benchmark_data(b) for b in BENCHMARKS],
    output:
        candidates=f"{R}/filter/candidates.parquet",
        rejects=f"{R}/filter/rules/rejects.parquet",
        stats=f"{R}/filter/rules/stats.json",
    log:
        f"{LOGS}/filter/rules.log",
    benchmark:
        f"{R}/benchmarks/filter/filter_rules.tsv"
    conda:
        CONDA_ENV
    threads: config["filter"].get("threads", 1)
    params:
        # without model_based (the student's sampling) or threads: neither changes the candidates
        settings=lambda w: settings(
            filter={
                k: v
                for k, v in config["filter"].items()
                if k not in ("model_based", "threads")
            },
            benchmarks=config["benchmarks"],
        ),
    shell:
        "python -m scalediff.filter rules --solutions {input.solutions} --pool {input.pool}"
        " --candidates {output.candidates} --rejects {output.rejects} --stats {output.stats}"
        " --workers {threads}"
        " --settings {params.settings:q} > {log} 2>&1"


rule filter_model_shard:
    input:
        candidates=f"{R}/filter/candidates.parquet",
        model=filter_student_input,
        plan=PREFLIGHT,
    output:
        verdicts=f"{R}/filter/model/{{scatteritem}}.parquet",
    log:
        f"{LOGS}/filter/model_{{scatteritem}}.log",
    benchmark:
        f"{R}/benchmarks/filter/filter_model_shard/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=role_model("student_base"),
        settings=lambda w: settings(
            seed=config["seed"],
            engine=engine_settings("student_base"),
            filter=config["filter"],
        ),
    shell:
        "python -m scalediff.filter model-shard --candidates {input.candidates} --model {params.model}"
        " --shard {wildcards.scatteritem} --output {output.verdicts}"
        " --settings {params.settings:q} > {log} 2>&1"


rule filter_gather:
    input:
        candidates=f"{R}/filter/candidates.parquet",
        rejects=f"{R}/filter/rules/rejects.parquet",
        stats=f"{R}/filter/rules/stats.json",
        verdicts=gather.filter(f"{R}/filter/model/{{scatteritem}}.parquet"),
    output:
        original=f"{R}/filter/dataset/original.parquet",
        generated=f"{R}/filter/dataset/generated.parquet",
        card=f"{R}/filter/dataset/README.md",
        rejects=f"{R}/filter/rejects.parquet",
        funnel=f"{R}/filter/funnel.json",
        funnel_csv=f"{R}/filter/funnel.csv",
        plot=report(
            f"{R}/filter/funnel.png",
            caption="report/filter_funnel.rst",
            category="4. filter",
        ),
    log:
        f"{LOGS}/filter/gather.log",
    benchmark:
        f"{R}/benchmarks/filter/filter_gather.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(filter=config["filter"]),
    shell:
        "python -m scalediff.filter gather --candidates {input.candidates} --rules-rejects {input.rejects}"
        " --rules-stats {input.stats} --verdicts {input.verdicts} --original {output.original}"
        " --generated {output.generated} --card {output.card} --rejects {output.rejects}"
        " --funnel {output.funnel} --funnel-csv {output.funnel_csv} --plot {output.plot}"
        " --settings {params.settings:q} > {log} 2>&1"
