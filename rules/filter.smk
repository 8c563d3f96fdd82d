# Filter: rule-based checks + decontamination + dedup, then the student-base model-based filter
# (scattered over shards), then the dataset, rejects, funnel and card.


rule filter_rules:
    input:
        solutions=at("distill", "distill/solutions.parquet"),
        pool=f"{R}/ingest/pool.parquet",
        benchmarks=[benchmark_data(b) for b in BENCHMARKS],
    output:
        candidates=f"{R}/{{exp}}filter/candidates.parquet",
        rejects=f"{R}/{{exp}}filter/rules/rejects.parquet",
        stats=f"{R}/{{exp}}filter/rules/stats.json",
    log:
        f"{R}/{{exp}}logs/filter/rules.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/filter/filter_rules.tsv"
    conda:
        CONDA_ENV
    threads: config["filter"].get("threads", 1)  # the main run's: threads are planned once
    params:
        # without model_based (the student's sampling) or threads: neither changes the candidates
        settings=lambda w: settings(
            filter={
                k: v
                for k, v in xconfig(w)["filter"].items()
                if k not in ("model_based", "threads")
            },
            benchmarks=xconfig(w)["benchmarks"],
        ),
    shell:
        "python -m scalediff.filter rules --solutions {input.solutions} --pool {input.pool}"
        " --candidates {output.candidates} --rejects {output.rejects} --stats {output.stats}"
        " --workers {threads}"
        " --settings {params.settings:q} > {log} 2>&1"


rule filter_model_shard:
    input:
        candidates=f"{R}/{{exp}}filter/candidates.parquet",
        model=filter_student_input,
        plan=PREFLIGHT,
    output:
        verdicts=f"{R}/{{exp}}filter/model/{{scatteritem}}.parquet",
    log:
        f"{R}/{{exp}}logs/filter/model_{{scatteritem}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/filter/filter_model_shard/{{scatteritem}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=lambda w: role_model("student_base", xconfig(w)),
        settings=lambda w: settings(
            seed=xconfig(w)["seed"],
            engine=engine_settings("student_base", xconfig(w)),
            filter=xconfig(w)["filter"],
        ),
    shell:
        "python -m scalediff.filter model-shard --candidates {input.candidates} --model {params.model}"
        " --shard {wildcards.scatteritem} --output {output.verdicts}"
        " --settings {params.settings:q} > {log} 2>&1"


rule filter_gather:
    input:
        candidates=f"{R}/{{exp}}filter/candidates.parquet",
        rejects=f"{R}/{{exp}}filter/rules/rejects.parquet",
        stats=f"{R}/{{exp}}filter/rules/stats.json",
        verdicts=gather.filter(f"{R}/{{{{exp}}}}filter/model/{{scatteritem}}.parquet"),
        agreement=verify_input,
    output:
        original=f"{R}/{{exp}}filter/dataset/original.parquet",
        generated=f"{R}/{{exp}}filter/dataset/generated.parquet",
        card=f"{R}/{{exp}}filter/dataset/README.md",
        rejects=f"{R}/{{exp}}filter/rejects.parquet",
        funnel=f"{R}/{{exp}}filter/funnel.json",
        funnel_csv=f"{R}/{{exp}}filter/funnel.csv",
        plot=report(
            f"{R}/{{exp}}filter/funnel.png",
            caption="report/filter_funnel.rst",
            category="4. filter",
        ),
    log:
        f"{R}/{{exp}}logs/filter/gather.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/filter/filter_gather.tsv"
    conda:
        CONDA_ENV
    params:
        agreement=lambda w, input: (
            f"--agreement {input.agreement}" if input.agreement else ""
        ),
        settings=lambda w: settings(
            filter=xconfig(w)["filter"], verify=xconfig(w)["verify"]
        ),
    shell:
        "python -m scalediff.filter gather --candidates {input.candidates} --rules-rejects {input.rejects}"
        " {params.agreement}"
        " --rules-stats {input.stats} --verdicts {input.verdicts} --original {output.original}"
        " --generated {output.generated} --card {output.card} --rejects {output.rejects}"
        " --funnel {output.funnel} --funnel-csv {output.funnel_csv} --plot {output.plot}"
        " --settings {params.settings:q} > {log} 2>&1"
