# Tiny models of the embedded default: built, tokenizer included, and briefly shaped here.


rule tiny_model:
    input:
        corpus=config.get("tiny", {}).get("corpus", []),
    output:
        model=directory(f"{R}/models/tiny/{{role}}"),
        loss=f"{R}/models/tiny/{{role}}.loss.csv",
        summary=f"{R}/models/tiny/{{role}}.json",
    log:
        f"{LOGS}/models/tiny_{{role}}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=lambda w: settings(seed=config["seed"], tiny=config["tiny"]),
    shell:
        "python -m scalediff.tiny --role {wildcards.role} --output {output.model}"
        " --loss-csv {output.loss} --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"
