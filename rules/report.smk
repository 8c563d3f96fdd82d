# The paper's tables rebuilt beside the published numbers, and the figures of every stage.


rule report:
    input:
        scores=expand(
            f"{R}/eval/{{model}}/{{benchmark}}.json",
            model=EVAL_MODELS,
            benchmark=BENCHMARKS,
        ),
        details=expand(
            f"{R}/eval/{{model}}/{{benchmark}}.details.parquet",
            model=EVAL_MODELS,
            benchmark=BENCHMARKS,
        ),
        select=f"{R}/select/summary.json",
        generated=f"{R}/select/generated/difficulty.parquet",
        pool_difficulty=f"{R}/select/difficulty.parquet",
        diffgen=f"{R}/diffgen/summary.json",
        distill=f"{R}/distill/summary.json",
        funnel=f"{R}/filter/funnel.json",
        sft=expand(f"{R}/sft/{{variant}}/summary.json", variant=SFT_VARIANTS),
        losses=[f"{R}/diffgen/loss.csv"]
        + expand(f"{R}/sft/{{variant}}/loss.csv", variant=SFT_VARIANTS),
        problems=f"{R}/diffgen/generated.parquet",
        solutions=f"{R}/distill/solutions.parquet",
        paper="config/paper_table.yaml",
    output:
        table_md=report(
            f"{R}/report/paper_table.md",
            caption="report/paper_table.rst",
            category="6. report",
        ),
        table_html=report(
            f"{R}/report/paper_table.html",
            caption="report/paper_table.rst",
            category="6. report",
        ),
        table_csv=f"{R}/report/paper_table.csv",
        summary=f"{R}/report/summary.json",
        difficulty=report(
            f"{R}/report/difficulty.png",
            caption="report/difficulty.rst",
            category="6. report",
        ),
        losses=report(
            f"{R}/report/loss_curves.png",
            caption="report/loss_curves.rst",
            category="6. report",
        ),
        scores=report(
            f"{R}/report/scores.png",
            caption="report/scores.rst",
            category="6. report",
        ),
        lengths=report(
            f"{R}/report/lengths.png",
            caption="report/lengths.rst",
            category="6. report",
        ),
        benchmarks=f"{R}/report/benchmarks.md",
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{R}/benchmarks/report/report.tsv"
    conda:
        CONDA_ENV
    params:
        out_dir=lambda w, output: os.path.dirname(output.summary),
        baseline=config["report"]["baseline_model"] or "",
        benchmarks=f"{R}/benchmarks",
        settings=lambda w: settings(
            eval_models=config["eval"]["models"],
            reproduces=config["report"].get("reproduces", {}),
            demo=DEMO,
        ),
    shell:
        "python -m scalediff.report --scores {input.scores} --select-summary {input.select}"
        " --pool-difficulty {input.pool_difficulty} --generated-difficulty {input.generated}"
        " --stage-summaries {input.diffgen} {input.distill} {input.funnel} {input.sft}"
        " --losses {input.losses} --paper-table {input.paper} --baseline-model {params.baseline:q}"
        " --generated {input.problems} --solutions {input.solutions}"
        " --benchmarks-dir {params.benchmarks} --out-dir {params.out_dir}"
        " --settings {params.settings:q} > {log} 2>&1"
