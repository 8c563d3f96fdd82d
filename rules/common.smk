# Config validation, path helpers and input functions shared by every rule file.
import json
import os
import re
import sys

from scalediff.download import HUB_ID
from scalediff.download import local_name as hub_local_name
from scalediff import experiments as xp

from snakemake.utils import validate

validate(config, "../config/schema.yaml")

R = config["results"]  # root of every output
LOGS = f"{R}/logs"
# Shell commands call `python`: the interpreter running Snakemake (the project's venv, also inside
# SLURM jobs), unless --use-conda puts the rule's conda env first on PATH.
shell.prefix(f'export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')
PY = sys.executable  # kept for rule files that still spell it out
CONDA_ENV = "../envs/scalediff.yaml"
TINY_ROLES = sorted(config.get("tiny", {}).get("roles", {}))
# Twins: tiny models with a real model's published settings; wildcard is the Hub id as org__name.
TWINS = {hub_local_name(m): m for m in config.get("twins", {}).get("models", {})}
BENCHMARKS = sorted(config["benchmarks"])
EVAL_MODELS = sorted(config["eval"]["models"])


def check_references(config, main=True):
    """Cross-references the schema cannot express, checked before any job is planned.
    Each error names its key, as the schema's do (a typo here would otherwise pass silently).
    """
    refs = {f"models.{k}": ref for k, ref in config["models"].items()}
    refs.update(
        {f"eval.models.{k}": ref for k, ref in config["eval"]["models"].items()}
    )
    for key, ref in refs.items():
        if "tiny" in ref and ref["tiny"] not in TINY_ROLES:
            raise ValueError(
                f"config {key}: tiny model {ref['tiny']!r} is not one of tiny.roles {TINY_ROLES}"
            )
    if config["verify"]["enabled"] and config["distill"].get("n", 1) < 2:
        raise ValueError(
            "config verify.enabled: the teacher's agreement needs distill.n >= 2 samples per problem"
        )
    if not main:  # a variant's report settings are the main run's: checked there
        return
    for name in config["report"].get("reproduces", {}):
        if name not in config["eval"]["models"]:
            raise ValueError(
                f"config report.reproduces.{name}: not one of eval.models {sorted(config['eval']['models'])}"
            )
    baseline = config["report"].get("baseline_model")
    if baseline and baseline not in EVAL_MODELS:
        raise ValueError(
            f"config report.baseline_model: {baseline!r} is not one of eval.models {EVAL_MODELS}"
        )


check_references(config)


# Experiments (`experiments:`): each variant is the main config with its overrides; a stage whose
# settings (and upstream stages') equal the main run's is read from the main run, the others run
# under results/experiments/<name>/. Rules carry that prefix in the `exp` wildcard ("" = main run).
EXPERIMENTS = sorted(config.get("experiments") or {})
VARIANTS = {name: xp.variant_config(config, name) for name in EXPERIMENTS}
for _name, _variant in VARIANTS.items():
    try:
        validate(_variant, "../config/schema.yaml")
    except Exception as exc:
        raise ValueError(
            f"config experiments.{_name}: the config with its overrides is invalid: {exc}"
        ) from exc
    check_references(_variant, main=False)
PREFIXES = xp.stage_prefixes(config)


def xconfig(wildcards):
    """The config of a job's experiment: the main config, or a variant's."""
    exp = wildcards.get("exp", "")
    return VARIANTS[xp.name_of(exp)] if exp else config


def prefix(wildcards, stage):
    """Where this job's experiment reads `stage` from: "" (the main run) or its own folder."""
    exp = wildcards.get("exp", "")
    return PREFIXES[xp.name_of(exp)][stage] if exp else ""


def run_name(wildcards):
    """`main`, or the experiment a job belongs to."""
    exp = wildcards.get("exp", "")
    return xp.name_of(exp) if exp else "main"


# Whether the student is a tiny demo model (the experiments report says so beside every figure).
DEMO = any(k in config["models"]["student_base"] for k in ("tiny", "twin"))


def at(stage, path):
    """Input function: `path` under `stage`'s results for the job's experiment."""
    return lambda wildcards: f"{R}/{prefix(wildcards, stage)}{path}"


# Names `engine.models` may configure: the generating roles (the trained generator included) and
# every evaluated model. A misspelt name would otherwise be silently ignored.
_ENGINE_MODELS = {"selector", "generator", "teacher", "student_base", *EVAL_MODELS}
if _unknown := sorted(set(config["engine"].get("models", {})) - _ENGINE_MODELS):
    raise ValueError(
        f"config engine.models: unknown model(s) {_unknown}; expected some of {sorted(_ENGINE_MODELS)}"
    )


def sft_variants(cfg):
    """SFT runs some eval model asks for: `scalediff` (original + generated), `original` (baseline)."""
    return sorted(
        {
            {"student": "scalediff", "student_original": "original"}[ref["trained"]]
            for ref in cfg["eval"]["models"].values()
            if ref.get("trained", "").startswith("student")
        }
    )


SFT_VARIANTS = sft_variants(config)


wildcard_constraints:
    exp="(" + "|".join(re.escape(xp.variant_prefix(n)) for n in EXPERIMENTS) + ")?",
    variant="scalediff|original",
    role="|".join(TINY_ROLES) or "NONE",
    twin="|".join(re.escape(k) for k in TWINS) or "NONE",
    benchmark="|".join(BENCHMARKS),
    model="|".join(EVAL_MODELS),


scattergather:
    select=config["select"]["shards"],
    select_generated=config["select"]["generated_shards"],
    diffgen=config["diffgen"]["sample"]["shards"],
    distill=config["distill"]["shards"],
    filter=config["filter"]["model_based"]["shards"],


def settings(**sections):
    """JSON handed to an entry point; as a param it also makes Snakemake rerun on config changes."""
    return json.dumps(sections, sort_keys=True)


def engine_settings(model, cfg=None):
    """vLLM settings for one model (a `models` role or an `eval.models` name): `engine` with the
    model's own entry under `engine.models` on top (context length, KV cache, rope overrides).
    """
    cfg = cfg or config
    base = {k: v for k, v in cfg["engine"].items() if k != "models"}
    return base | cfg["engine"].get("models", {}).get(model, {})


# Hub downloads (`hub:`): every Hub model and dataset the config names is fetched once by a local
# rule (rules/ref.smk) into hub.dir at its pinned revision; jobs then load the local directory.
HUB = config.get("hub") or {}
HUB_REVISIONS = HUB.get("revisions", {})
HUB_DIR = HUB.get("dir", "resources/hub")
HUB_NAMES = {hub_local_name(repo): repo for repo in HUB_REVISIONS}  # wildcard -> Hub id
# Pool datasets are fetched with only the files the config reads (e.g. AM-Qwen3-Distilled's math.jsonl).
HUB_DATA_FILES = {
    s["hf_dataset"]: [s["hf_data_files"]] if s.get("hf_data_files") else []
    for s in config["pool"]["sources"]
    if "hf_dataset" in s
}


def hub_dir(repo_id, kind="models"):
    """Local directory of a Hub model or dataset (`kind`: models | datasets)."""
    return os.path.join(HUB_DIR, kind, hub_local_name(repo_id))


def from_hub(repo_id):
    """Whether a model `path:` / pool `hf_dataset:` is fetched by the download rules."""
    return bool(HUB) and repo_id in HUB_REVISIONS


def _check_hub_refs():
    """With `hub:` set, a Hub id without a pinned revision would be loaded from the Hub inside a
    GPU job (offline there, so it fails): name it before anything runs."""
    if not HUB:
        return
    refs = [
        ref["path"]
        for ref in [*config["models"].values(), *config["eval"]["models"].values()]
        if "path" in ref
    ]
    refs += [s["hf_dataset"] for s in config["pool"]["sources"] if "hf_dataset" in s]
    missing = [
        r
        for r in refs
        if HUB_ID.match(r) and not os.path.isdir(r) and r not in HUB_REVISIONS
    ]
    if missing:
        raise ValueError(
            f"config hub.revisions: no pinned revision for {sorted(set(missing))}"
            " (add one per Hub id, or point `path:` at a local directory)"
        )


_check_hub_refs()


def pool_settings():
    """The pool config an ingest job gets: Hub datasets replaced by their downloaded directory."""
    sources = [
        (
            s | {"hf_dataset": hub_dir(s["hf_dataset"], "datasets")}
            if from_hub(s.get("hf_dataset", ""))
            else s
        )
        for s in config["pool"]["sources"]
    ]
    return config["pool"] | {"sources": sources}


def pool_inputs():
    """Local pool files and downloaded pool datasets (the ingest job's file dependencies)."""
    files = [s["path"] for s in config["pool"]["sources"] if "path" in s]
    hub = [
        hub_dir(s["hf_dataset"], "datasets")
        for s in config["pool"]["sources"]
        if from_hub(s.get("hf_dataset", ""))
    ]
    return files + hub


def model_path(ref, trained_prefix=""):
    """Where a model reference (config `models`/`eval.models` entry) lives on disk or the Hub
    (`trained_prefix`: the experiment folder of the stage that trains it, "" for the main run).
    """
    if "tiny" in ref:
        if ref["tiny"] not in TINY_ROLES:
            raise ValueError(
                f"config: tiny model {ref['tiny']!r} has no entry under tiny.roles"
            )
        return f"{R}/models/tiny/{ref['tiny']}"
    if "twin" in ref:
        key = hub_local_name(ref["twin"])
        if key not in TWINS:
            raise ValueError(
                f"config: twin {ref['twin']!r} has no entry under twins.models"
            )
        return f"{R}/models/twins/{key}"
    if "trained" in ref:
        return {
            "student": f"{R}/{trained_prefix}sft/scalediff/model",
            "student_original": f"{R}/{trained_prefix}sft/original/model",
            "generator": f"{R}/{trained_prefix}diffgen/model",
        }[ref["trained"]]
    if from_hub(ref["path"]):
        return hub_dir(ref["path"])
    return ref["path"]


def model_input(ref, trained_prefix=""):
    """File dependency for a model: built, trained or downloaded here -> its directory; a local
    directory or (without `hub:`) a Hub id -> none."""
    built = "tiny" in ref or "twin" in ref or "trained" in ref
    if built or from_hub(ref.get("path", "")):
        return [model_path(ref, trained_prefix)]
    return []


def role_model(role, cfg=None):
    return model_path((cfg or config)["models"][role])


def role_input(role):
    """Input function: the model a role names in the job's experiment (a variant may swap one)."""
    return lambda wildcards: model_input(xconfig(wildcards)["models"][role])


def model_arg(role):
    """Params function: the model a rule loads (its input dir when built here, else the Hub id)."""

    def resolve(wildcards, input):
        if input.get("model"):
            return input.model
        return role_model(role, xconfig(wildcards))

    return resolve


def filter_student_input(wildcards):
    """The student base is only needed (and built) when the model-based filter is on."""
    cfg = xconfig(wildcards)
    if cfg["filter"]["model_based"]["enabled"]:
        return role_input("student_base")(wildcards)
    return []


def eval_model(wildcards):
    return xconfig(wildcards)["eval"]["models"][wildcards.model]


def eval_prefix(wildcards):
    """The experiment folder of the stage that trained the evaluated model ("" for the main run)."""
    exp = wildcards.get("exp", "")
    if not exp:
        return ""
    ref = eval_model(wildcards)
    stage = xp.TRAINED_BY.get(ref.get("trained", ""))
    return PREFIXES[xp.name_of(exp)][stage] if stage else ""


def eval_model_input(wildcards):
    return model_input(eval_model(wildcards), eval_prefix(wildcards))


def eval_model_arg(wildcards, input):
    if input.get("model"):
        return input.model
    return model_path(eval_model(wildcards), eval_prefix(wildcards))


def eval_scores(exp_name, cfg, suffix=".json"):
    """Every evaluation of experiment `exp_name` ("" for the main run): the variant's own where it
    recomputes them, the main run's otherwise."""
    prefixes = PREFIXES.get(exp_name)
    out = []
    for model in sorted(cfg["eval"]["models"]):
        where = (
            xp.eval_prefix(prefixes, cfg["eval"]["models"][model]) if prefixes else ""
        )
        out += [
            f"{R}/{where}eval/{model}/{b}{suffix}" for b in sorted(cfg["benchmarks"])
        ]
    return out


def train_resources(section):
    """Rule resources of a training run: nodes and GPUs per node (config), as the slurm plugin
    reads them (`gres` is per node, with the GPU type when set; `tasks_per_gpu: 0` keeps it from
    adding --ntasks-per-gpu). Multi-node runs take the plugin's `mpi` path: the job-step plugin
    then runs the command as is instead of inside its own `srun -n1` step, so the command's
    `srun` (launcher) is the one step, with one task per node on exclusive nodes.
    """
    cfg = section["launch"]
    res = {"nodes": cfg["nodes"], "tasks_per_gpu": 0}
    if cfg["gpus_per_node"]:
        gpu = f"gpu:{cfg['gpu_type']}" if cfg.get("gpu_type") else "gpu"
        res["gres"] = f"{gpu}:{cfg['gpus_per_node']}"
    if cfg["nodes"] > 1:
        res |= {
            "mpi": "srun",
            "tasks": cfg["nodes"],
            "slurm_extra": "--ntasks-per-node=1 --exclusive",
        }
    return res


def segmented(res):
    """Training resources plus `--requeue`: a run ending a time-boxed segment (`segment_minutes`)
    requeues its own job, which resumes from the segment's checkpoint (scalediff.train.end_segment).
    """
    extra = " ".join(x for x in (res.get("slurm_extra", ""), "--requeue") if x)
    return res | {"slurm_extra": extra}


def launcher(section):
    """How a training entry point starts: one process, or torchrun with one worker per GPU
    (multi-node: one torchrun per node from a single srun step, rendezvous on the job's first
    node; srun gets its CPUs explicitly, as it no longer inherits them from the job since SLURM
    22.05, and ends the step when any node's torchrun fails).
    """
    cfg = section["launch"]
    nodes, gpus = cfg["nodes"], cfg["gpus_per_node"]
    if nodes <= 1 and gpus <= 1:
        return "python -m"
    run = f"torchrun --nnodes {nodes} --nproc-per-node {max(gpus, 1)}"
    if nodes <= 1:
        return f"{run} --standalone -m"
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (
        f"srun --kill-on-bad-exit=1 --wait=60 --nodes {nodes} --ntasks-per-node 1"
        f' --cpus-per-task "$SLURM_CPUS_ON_NODE" {run} --rdzv-id $SLURM_JOB_ID'
        f" --rdzv-backend c10d --rdzv-endpoint {head}:{cfg.get('port', 29500)} -m"
    )


def sft_data(wildcards):
    """The SFT mix: original data, plus the generated data for the ScaleDiff student."""
    splits = (
        ["original"] if wildcards.variant == "original" else ["original", "generated"]
    )
    root = f"{R}/{prefix(wildcards, 'filter')}filter/dataset"
    return [f"{root}/{split}.parquet" for split in splits]


def verify_input(wildcards):
    """The teacher's self-agreement, when verification is on (`verify.enabled`)."""
    if not xconfig(wildcards)["verify"]["enabled"]:
        return []
    return [f"{R}/{prefix(wildcards, 'verify')}verify/agreement.parquet"]


def sft_difficulty(wildcards):
    """The selector's labels, when the mix keeps only the difficult pool problems."""
    if xconfig(wildcards).get("sft_mix", {}).get("original", "all") != "difficult":
        return []
    return [f"{R}/{prefix(wildcards, 'select')}select/difficulty.parquet"]


def sft_mix(wildcards):
    """`sft_mix` for one SFT run: the original-only run takes only its original-data keys."""
    mix = xconfig(wildcards).get("sft_mix", {})
    if wildcards.variant == "original":
        return {k: v for k, v in mix.items() if k != "generated_ratio"}
    return mix


def benchmark_data(benchmark):
    return config["benchmarks"][benchmark].get("path", [])
