# Student SFT: `scalediff` on original + generated data; `original` on the original data only
# (the paper's AM-Qwen3-Distilled-7B baseline), built when an eval model asks for it.


# The Arrow file and token lengths, built on a CPU node before the GPU job (which only maps them).
rule sft_data:
    input:
        data=sft_data,
        model=role_input("student_base"),
    output:
        directory(f"{R}/sft/{{variant}}/data"),
    log:
        f"{LOGS}/sft/{{variant}}.data.log",
    benchmark:
        f"{R}/benchmarks/sft/sft_data/{{variant}}.tsv"
    conda:
        CONDA_ENV
    threads: 16
    params:
        base=model_arg("student_base"),
        settings=settings(sft={}),
    shell:
        "RAYON_NUM_THREADS={threads} python -m scalediff.sft --prepare {output} --data {input.data}"
        " --base-model {params.base} --settings {params.settings:q} > {log} 2>&1"


rule sft_train:
    input:
        data=sft_data,
        prepared=f"{R}/sft/{{variant}}/data",
        model=role_input("student_base"),
        plan=PREFLIGHT,
    output:
        model=directory(f"{R}/sft/{{variant}}/model"),
        loss=f"{R}/sft/{{variant}}/loss.csv",
        summary=f"{R}/sft/{{variant}}/summary.json",
    log:
        f"{LOGS}/sft/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/sft/sft_train/{{variant}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **segmented(train_resources(config["sft"])),
    params:
        launch=launcher(config["sft"]),
        base=model_arg("student_base"),
        settings=lambda w: settings(sft=config["sft"]),
    shell:
        "{params.launch} scalediff.sft --data {input.data} --prepared {input.prepared}"
        " --base-model {params.base} --output {output.model} --loss-csv {output.loss}"
        " --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"
