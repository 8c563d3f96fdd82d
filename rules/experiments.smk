# Experiments (config `experiments:`): each variant reruns only the stages its overrides change
# (rules carry the `exp` wildcard); `snakemake experiments` tabulates every variant beside the main
# run, one variant runs by its target: results/experiments/<name>/run_summary.json.


rule experiment_run:
    input:
        scores=lambda w: eval_scores(run_name(w), xconfig(w)),
        details=lambda w: eval_scores(run_name(w), xconfig(w), ".details.parquet"),
        sft=lambda w: [
            f"{R}/{prefix(w, 'sft_' + v)}sft/{v}/summary.json"
            for v in sft_variants(xconfig(w))
        ],
        funnel=at("filter", "filter/funnel.json"),
        generated=at("select_generated", "select/generated/summary.json"),
        select=at("select", "select/summary.json"),
    output:
        f"{R}/{{exp}}run_summary.json",
    log:
        f"{R}/{{exp}}logs/experiments/run_summary.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/experiments/experiment_run.tsv"
    conda:
        CONDA_ENV
    params:
        name=run_name,
        select_benchmarks=lambda w: f"{R}/{prefix(w, 'select')}benchmarks",
    shell:
        "python -m scalediff.experiments_report run --name {params.name} --scores {input.scores}"
        " --sft {input.sft} --funnel {input.funnel} --generated-select {input.generated}"
        " --select-summary {input.select} --select-benchmarks {params.select_benchmarks}"
        " --output {output} > {log} 2>&1"


rule experiments:
    input:
        runs=[f"{R}/run_summary.json"]
        + [f"{R}/{xp.variant_prefix(n)}run_summary.json" for n in EXPERIMENTS],
        paper="config/paper_table.yaml",
    output:
        table=report(
            f"{R}/experiments/experiments.md",
            caption="report/experiments.rst",
            category="7. experiments",
        ),
        plot=report(
            f"{R}/experiments/avg_vs_generated.png",
            caption="report/experiments_size.rst",
            category="7. experiments",
        ),
        summary=f"{R}/experiments/summary.json",
    log:
        f"{LOGS}/experiments/experiments.log",
    benchmark:
        f"{R}/benchmarks/experiments/experiments.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(
            experiments={
                n: config["experiments"][n]
                | {"rerun": [s for s, p in PREFIXES[n].items() if p]}
                for n in EXPERIMENTS
            },
            eval_models=config["eval"]["models"],
            benchmarks=config["benchmarks"],
            demo=DEMO,
        ),
    shell:
        "python -m scalediff.experiments_report --runs {input.runs} --paper-table {input.paper}"
        " --table {output.table} --plot {output.plot} --summary {output.summary}"
        " --settings {params.settings:q} > {log} 2>&1"
