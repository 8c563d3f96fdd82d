# Preflight: the plan of every GPU rule's memory and every stage's GPU-hours and runtime
# (scalediff.plan -> results/plan/plan.md), made before any other job. Every GPU rule and every
# root rule of the DAG takes its output as an input: ordered after it, and never rerun only because
# a new plan was written. A checkpoint, so that after a re-plan (any config change) Snakemake
# re-evaluates the DAG: with a plain rule and `ancient` inputs, Snakemake 9 would skip every job
# downstream of a re-planning preflight in that invocation. Until the plan is made, a dry run lists
# the jobs behind it as pending.
PREFLIGHT = lambda wildcards: ancient(checkpoints.preflight.get().output.json)


# Model directories the plan reads: local ones, and those this workflow writes under results/.
PLAN_MODELS = sorted(
    {
        ref["path"]
        for ref in [*config["models"].values(), *config["eval"]["models"].values()]
        if "path" in ref
        and (os.path.isdir(ref["path"]) or ref["path"].startswith(f"{R}/"))
    }
)


checkpoint preflight:
    input:
        profile="profiles/slurm/config.yaml",
        cluster_profile="profiles/slurm-cluster/config.yaml",
        facts="config/model_facts.yaml",
        models=PLAN_MODELS,
    output:
        md=f"{R}/plan/plan.md",
        json=f"{R}/plan/plan.json",
    log:
        f"{LOGS}/plan.log",
    benchmark:
        f"{R}/benchmarks/plan/preflight.tsv"
    localrule: True  # seconds of arithmetic: on the submit host, before anything is queued
    conda:
        CONDA_ENV
    params:
        settings=lambda w: json.dumps(config, sort_keys=True),
        benchmarks=f"{R}/benchmarks",
    shell:
        "python -m scalediff.plan --settings {params.settings:q} --profile {input.profile}"
        " --cluster-profile {input.cluster_profile} --facts {input.facts}"
        " --benchmarks {params.benchmarks} --markdown {output.md} --json {output.json} > {log} 2>&1"
