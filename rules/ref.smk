# References from the Hub (the catalog's ref.smk): every Hub model and dataset the config names,
# fetched once on the submit host at the revision pinned in `hub.revisions`. Jobs then run offline.


wildcard_constraints:
    hub_model="|".join(re.escape(k) for k in HUB_NAMES) or "NONE",
    hub_dataset="|".join(re.escape(k) for k in HUB_NAMES) or "NONE",


rule download_model:
    output:
        model=directory(f"{HUB_DIR}/models/{{hub_model}}"),
        summary=f"{HUB_DIR}/models/{{hub_model}}.json",
    log:
        f"{LOGS}/download/model_{{hub_model}}.log",
    benchmark:
        f"{R}/benchmarks/download/download_model/{{hub_model}}.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        repo_id=lambda w: HUB_NAMES[w.hub_model],
        revision=lambda w: HUB_REVISIONS[HUB_NAMES[w.hub_model]],
        cache=HUB.get("cache_dir") or f"{HUB_DIR}/cache",
    shell:
        "python -m scalediff.download --repo-id {params.repo_id} --revision {params.revision}"
        " --cache-dir {params.cache} --output {output.model} --summary {output.summary} > {log} 2>&1"


rule download_dataset:
    output:
        data=directory(f"{HUB_DIR}/datasets/{{hub_dataset}}"),
        summary=f"{HUB_DIR}/datasets/{{hub_dataset}}.json",
    log:
        f"{LOGS}/download/dataset_{{hub_dataset}}.log",
    benchmark:
        f"{R}/benchmarks/download/download_dataset/{{hub_dataset}}.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        repo_id=lambda w: HUB_NAMES[w.hub_dataset],
        revision=lambda w: HUB_REVISIONS[HUB_NAMES[w.hub_dataset]],
        cache=HUB.get("cache_dir") or f"{HUB_DIR}/cache",
        patterns=lambda w: " ".join(
            f"--allow-pattern {p}"
            for p in HUB_DATA_FILES.get(HUB_NAMES[w.hub_dataset], [])
        ),
    shell:
        "python -m scalediff.download --repo-type dataset --repo-id {params.repo_id}"
        " --revision {params.revision} --cache-dir {params.cache} {params.patterns}"
        " --output {output.data} --summary {output.summary} > {log} 2>&1"
