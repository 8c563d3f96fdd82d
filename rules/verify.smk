# Verification (optional, `verify.enabled`): the majority answer of the teacher's `distill.n`
# samples per problem and their agreement; filter gather drops problems below `verify.min_agreement`.


rule verify:
    input:
        solutions=at("distill", "distill/solutions.parquet"),
    output:
        agreement=f"{R}/{{exp}}verify/agreement.parquet",
        summary=f"{R}/{{exp}}verify/summary.json",
        plot=report(
            f"{R}/{{exp}}verify/agreement.png",
            caption="report/verify_agreement.rst",
            category="4. filter",
        ),
    log:
        f"{R}/{{exp}}logs/verify/verify.log",
    benchmark:
        f"{R}/{{exp}}benchmarks/verify/verify.tsv"
    conda:
        CONDA_ENV
    params:
        settings=lambda w: settings(verify=xconfig(w)["verify"]),
    shell:
        "python -m scalediff.verify --solutions {input.solutions} --output {output.agreement}"
        " --summary {output.summary} --plot {output.plot} --settings {params.settings:q} > {log} 2>&1"
