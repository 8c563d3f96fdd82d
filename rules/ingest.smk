# Read the problem pool, give every problem a stable id, quarantine unreadable rows.


rule ingest:
    input:
        sources=[s["path"] for s in config["pool"]["sources"] if "path" in s],
    output:
        pool=f"{R}/ingest/pool.parquet",
        rejects=f"{R}/ingest/rejects.parquet",
        summary=f"{R}/ingest/summary.json",
    log:
        f"{LOGS}/ingest.log",
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(seed=config["seed"], pool=config["pool"]),
    shell:
        "python -m scalediff.ingest --pool {output.pool} --rejects {output.rejects}"
        " --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"
