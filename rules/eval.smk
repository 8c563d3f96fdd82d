# lighteval on every benchmark for every model in config eval.models, through the engine layer.


rule eval_benchmark:
    input:
        data=lambda w: benchmark_data(w.benchmark),
        model=eval_model_input,
        plan=PREFLIGHT,
    output:
        scores=f"{R}/{{exp}}eval/{{model}}/{{benchmark}}.json",
        details=f"{R}/{{exp}}eval/{{model}}/{{benchmark}}.details.parquet",
    log:
        f"{R}/{{exp}}logs/eval/{{model}}/{{benchmark}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/eval/eval_benchmark/{{model}}__{{benchmark}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=eval_model_arg,
        seeds=lambda w: xconfig(w)["benchmarks"][w.benchmark]["seeds"],
        limit=lambda w: (
            f"--limit {xconfig(w)['benchmarks'][w.benchmark]['limit']}"
            if xconfig(w)["benchmarks"][w.benchmark].get("limit")
            else ""
        ),
        settings=lambda w: settings(
            engine=engine_settings(w.model, xconfig(w)), eval=xconfig(w)["eval"]
        ),
    shell:
        "python -m scalediff.evaluate --model {params.model} --model-name {wildcards.model}"
        " --benchmark {wildcards.benchmark} --data {input.data} --seeds {params.seeds} {params.limit}"
        " --output {output.scores} --details {output.details} --settings {params.settings:q} > {log} 2>&1"
