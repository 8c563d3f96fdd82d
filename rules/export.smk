# Opt-in exports of the final dataset. export_llamafactory: a LLaMA-Factory dataset_info.json
# (cheap, may be part of `all`). export_hub: `snakemake export_hub --cores 1` pushes
# filter/dataset/ to report.export.hub_repo; the token is read by the script from the
# environment HF_TOKEN, never from config, params or the shell string.


rule export_llamafactory:
    input:
        original=f"{R}/filter/dataset/original.parquet",
        generated=f"{R}/filter/dataset/generated.parquet",
    output:
        info=f"{R}/export/dataset_info.json",
    log:
        f"{LOGS}/export/llamafactory.log",
    benchmark:
        f"{R}/benchmarks/export/export_llamafactory.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m scalediff.export llamafactory --original {input.original}"
        " --generated {input.generated} --output {output.info} > {log} 2>&1"


rule export_hub:
    input:
        original=f"{R}/filter/dataset/original.parquet",
        generated=f"{R}/filter/dataset/generated.parquet",
        card=f"{R}/filter/dataset/README.md",
    output:
        receipt=f"{R}/export/hub_push.json",
    log:
        f"{LOGS}/export/hub.log",
    benchmark:
        f"{R}/benchmarks/export/export_hub.tsv"
    localrule: True  # needs the internet: run on the submit host, not a cluster node
    conda:
        CONDA_ENV
    params:
        dataset_dir=lambda w, input: os.path.dirname(input.card),
        repo=config["report"].get("export", {}).get("hub_repo") or "",
        visibility=(
            ""
            if config["report"].get("export", {}).get("private", True)
            else "--public"
        ),
    shell:
        "python -m scalediff.export hub --dataset-dir {params.dataset_dir} --repo={params.repo:q}"
        " {params.visibility} --receipt {output.receipt} > {log} 2>&1"
