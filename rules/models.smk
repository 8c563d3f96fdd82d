# Tiny models of the embedded default, and twins of the real models: built, tokenizer
# included, and briefly shaped here.


rule tiny_model:
    input:
        corpus=config.get("tiny", {}).get("corpus", []),
        plan=PREFLIGHT,
    output:
        model=directory(f"{R}/models/tiny/{{role}}"),
        loss=f"{R}/models/tiny/{{role}}.loss.csv",
        summary=f"{R}/models/tiny/{{role}}.json",
    log:
        f"{LOGS}/models/tiny_{{role}}.log",
    benchmark:
        f"{R}/benchmarks/models/tiny_model/{{role}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=lambda w: settings(seed=config["seed"], tiny=config["tiny"]),
    shell:
        "python -m scalediff.tiny --role {wildcards.role} --output {output.model}"
        " --loss-csv {output.loss} --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"


# Twins: a real model's published settings (config/twins/<org>__<name>) on tiny, briefly shaped
# weights, so a config can point a model role at `twin: <Hub id>` and meet the real model's limits.
rule twin_model:
    input:
        facts=lambda w: [
            f"{config['twins']['facts']}/{w.twin}/{name}"
            for name in (
                "config.json",
                "generation_config.json",
                "tokenizer_config.json",
                "special_tokens.json",
                "sources.json",
            )
        ],
        corpus=config.get("twins", {}).get("corpus", []),
    output:
        model=directory(f"{R}/models/twins/{{twin}}"),
        loss=f"{R}/models/twins/{{twin}}.loss.csv",
        summary=f"{R}/models/twins/{{twin}}.json",
    log:
        f"{LOGS}/models/twin_{{twin}}.log",
    benchmark:
        f"{R}/benchmarks/models/twin_model/{{twin}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=lambda w: settings(seed=config["seed"], twins=config["twins"]),
    shell:
        "python -m scalediff.tiny --twin {wildcards.twin} --output {output.model}"
        " --loss-csv {output.loss} --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"
