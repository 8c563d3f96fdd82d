# Read the problem pool, give every problem a stable id, quarantine unreadable rows.


rule ingest:
    input:
        sources=pool_inputs(),
        plan=PREFLIGHT,
    output:
        pool=f"{R}/ingest/pool.parquet",
        rejects=f"{R}/ingest/rejects.parquet",
        summary=f"{R}/ingest/summary.json",
    log:
        f"{LOGS}/ingest.log",
    benchmark:
        f"{R}/benchmarks/ingest/ingest.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(seed=config["seed"], pool=pool_settings()),
    shell:
        "python -m scalediff.ingest --pool {output.pool} --rejects {output.rejects}"
        " --summary {output.summary} --settings {params.settings:q} > {log} 2>&1"
