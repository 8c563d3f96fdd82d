# Config validation, path helpers and input functions shared by every rule file.
import json
import sys

from snakemake.utils import validate

validate(config, "../config/schema.yaml")

R = config["results"]  # root of every output
LOGS = f"{R}/logs"
PY = (
    sys.executable
)  # the interpreter running Snakemake: the project's venv, also inside SLURM jobs
TINY_ROLES = sorted(config.get("tiny", {}).get("roles", {}))
BENCHMARKS = sorted(config["benchmarks"])
EVAL_MODELS = sorted(config["eval"]["models"])


wildcard_constraints:
    role="|".join(TINY_ROLES) or "NONE",
    benchmark="|".join(BENCHMARKS),
    model="|".join(EVAL_MODELS),


scattergather:
    select=config["select"]["shards"],
    diffgen=config["diffgen"]["sample"]["shards"],
    distill=config["distill"]["shards"],
    filter=config["filter"]["model_based"]["shards"],


def settings(**sections):
    """JSON handed to an entry point; as a param it also makes Snakemake rerun on config changes."""
    return json.dumps(sections, sort_keys=True)


def model_path(ref):
    """Where a model reference (config `models`/`eval.models` entry) lives on disk or the Hub."""
    if "tiny" in ref:
        if ref["tiny"] not in TINY_ROLES:
            raise ValueError(
                f"config: tiny model {ref['tiny']!r} has no entry under tiny.roles"
            )
        return f"{R}/models/tiny/{ref['tiny']}"
    if "trained" in ref:
        return {"student": f"{R}/sft/model", "generator": f"{R}/diffgen/model"}[
            ref["trained"]
        ]
    return ref["path"]


def model_input(ref):
    """File dependency for a model: built or trained here -> its directory; Hub id -> none."""
    return [model_path(ref)] if ("tiny" in ref or "trained" in ref) else []


def role_model(role):
    return model_path(config["models"][role])


def role_input(role):
    return model_input(config["models"][role])


def benchmark_data(benchmark):
    return config["benchmarks"][benchmark].get("path", [])
