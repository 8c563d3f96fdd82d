# Student SFT: `scalediff` on original + generated data; `original` on the original data only
# (the paper's AM-Qwen3-Distilled-7B baseline), built when an eval model asks for it.


# The Arrow file and token lengths, built on a CPU node before the GPU job (which only maps them).
rule sft_data:
    input:
        data=sft_data,
        difficulty=sft_difficulty,
        model=role_input("student_base"),
    output:
        directory(f"{R}/{{exp}}sft/{{variant}}/data"),
    log:
        f"{R}/{{exp}}logs/sft/{{variant}}.data.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/sft/sft_data/{{variant}}.tsv"
    conda:
        CONDA_ENV
    threads: 16
    params:
        base=model_arg("student_base"),
        difficulty=lambda w, input: (
            f"--difficulty {input.difficulty}" if input.difficulty else ""
        ),
        settings=lambda w: settings(
            sft={
                "trust_remote_code": xconfig(w)["sft"].get("trust_remote_code", False)
            },
            sft_mix=sft_mix(w),
        ),
    shell:
        "RAYON_NUM_THREADS={threads} python -m scalediff.sft --prepare {output} --data {input.data}"
        " {params.difficulty} --base-model {params.base} --settings {params.settings:q} > {log} 2>&1"


rule sft_train:
    input:
        data=sft_data,
        difficulty=sft_difficulty,
        prepared=f"{R}/{{exp}}sft/{{variant}}/data",
        model=role_input("student_base"),
        plan=PREFLIGHT,
    output:
        model=directory(f"{R}/{{exp}}sft/{{variant}}/model"),
        loss=f"{R}/{{exp}}sft/{{variant}}/loss.csv",
        summary=f"{R}/{{exp}}sft/{{variant}}/summary.json",
    log:
        f"{R}/{{exp}}logs/sft/{{variant}}.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/sft/sft_train/{{variant}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **segmented(train_resources(config["sft"])),
    params:
        launch=launcher(config["sft"]),
        base=model_arg("student_base"),
        difficulty=lambda w, input: (
            f"--difficulty {input.difficulty}" if input.difficulty else ""
        ),
        settings=lambda w: settings(sft=xconfig(w)["sft"], sft_mix=sft_mix(w)),
    shell:
        "{params.launch} scalediff.sft --data {input.data} --prepared {input.prepared} {params.difficulty}"
        " --base-model {params.base} --output {output.model} --loss-csv {output.loss}"
        " --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"
