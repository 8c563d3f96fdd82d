# Student SFT on original + generated data.


rule sft_train:
    input:
        original=f"{R}/filter/dataset/original.parquet",
        generated=f"{R}/filter/dataset/generated.parquet",
        model=role_input("student_base"),
    output:
        model=directory(f"{R}/sft/model"),
        loss=f"{R}/sft/loss.csv",
        summary=f"{R}/sft/summary.json",
    log:
        f"{LOGS}/sft/train.log",
    conda:
        CONDA_ENV
    resources:
        **train_resources(config["sft"]),
    params:
        launch=launcher(config["sft"]),
        base=model_arg("student_base"),
        settings=lambda w: settings(sft=config["sft"]),
    shell:
        "{params.launch} scalediff.sft --data {input.original} {input.generated} --base-model {params.base}"
        " --output {output.model} --loss-csv {output.loss} --summary {output.summary}"
        " --settings {params.settings:q} > {log} 2>&1"
