"""Experiments: named variants of the main config, each a set of dotted-key overrides.

A variant reuses every stage whose settings, and whose upstream stages' settings, equal the main
run's; only the stages that differ run again, under ``<results>/experiments/<name>/``. The stage map
below is what decides it: the config keys each stage reads and the stages it reads from. It is
deliberately coarse (a whole section where a stage reads part of it): a key listed that a stage does
not read only costs a recomputation, a key left out would reuse a stale output.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

# stage -> (config keys it reads, stages it reads from)
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "select": (("seed", "engine", "models.selector", "select"), ()),
    "diffgen_train": (("models.generator_base", "diffgen.train"), ("select",)),
    "diffgen": (("seed", "engine", "diffgen.sample"), ("diffgen_train",)),
    "select_generated": (("seed", "engine", "models.selector", "select"), ("diffgen",)),
    "distill": (("seed", "engine", "models.teacher", "distill"), ("diffgen",)),
    "verify": (("verify",), ("distill",)),
    "filter": (("seed", "engine", "models.student_base", "filter", "benchmarks", "verify"), ("distill", "verify")),
    # the two SFT runs: original data only (the paper's baseline) and original + generated
    "sft_original": (("models.student_base", "sft", "sft_mix.original", "sft_mix.seed"), ("filter",)),
    "sft_scalediff": (("models.student_base", "sft", "sft_mix"), ("filter",)),
}
SFT_STAGES = {"original": "sft_original", "scalediff": "sft_scalediff"}
# Evaluation and the report are per variant whenever anything upstream differs (see ``eval_root``).
EVAL_KEYS = ("seed", "engine", "eval", "benchmarks")

# Keys a variant may not override: shared inputs every variant reads from the main run (the pool,
# the built models), where outputs live, cluster sizing, and the scatter counts (Snakemake's
# scatter/gather counts are one per workflow).
SHARED_KEYS = (
    "results",
    "pool",
    "tiny",
    "twins",
    "hub",
    "cluster",
    "plan",
    "experiments",
    "select.shards",
    "select.generated_shards",
    "diffgen.sample.shards",
    "distill.shards",
    "filter.model_based.shards",
    "diffgen.train.launch",
    "sft.launch",
)
ROOT = "experiments"  # variants live under <results>/experiments/<name>/
MISSING = object()


class ExperimentError(ValueError):
    """A variant that cannot be planned; the message names the experiment and the key."""


def get_dotted(config: dict[str, Any], key: str, default: Any = MISSING) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def _shared(key: str) -> str | None:
    for shared in SHARED_KEYS:
        if key == shared or key.startswith(shared + ".") or shared.startswith(key + "."):
            return shared
    return None


def variant_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The main config with experiment ``name``'s overrides applied (a deep copy; the main config is
    untouched). Every overridden key must exist in the main config (a typo would otherwise run the
    main settings under the variant's name) and must not be a shared key."""
    spec = config.get("experiments", {}).get(name)
    if spec is None:
        raise ExperimentError(f"config experiments: no experiment named {name!r}")
    out = copy.deepcopy({k: v for k, v in config.items() if k != "experiments"})
    for key, value in spec.get("overrides", {}).items():
        where = f"config experiments.{name}.overrides.{key}"
        if shared := _shared(key):
            raise ExperimentError(f"{where}: {shared!r} is shared by every variant and cannot be overridden")
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ExperimentError(f"{where}: {'.'.join(parts[: i + 1])!r} is not a section of the config")
            node = node[part]
        if parts[-1] not in node:
            known = ", ".join(sorted(node)) or "none"
            raise ExperimentError(f"{where}: no such key in the config (keys there: {known})")
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprints(config: dict[str, Any]) -> dict[str, str]:
    """Per stage: a digest of the keys it reads and of its upstream stages' digests."""
    out: dict[str, str] = {}
    for stage, (keys, upstream) in STAGES.items():  # listed in dependency order
        own = {k: get_dotted(config, k, None) for k in keys}
        if stage == "verify" and not get_dotted(config, "verify.enabled", False):
            out[stage] = _digest("off")  # no job: nothing to recompute, whatever is upstream
            continue
        if stage in SFT_STAGES.values() and get_dotted(config, "sft_mix.original", "all") == "difficult":
            upstream = (*upstream, "select")  # the pool's difficult subset: the selector's labels
        out[stage] = _digest([own, [out[u] for u in upstream]])
    return out


def variant_prefix(name: str) -> str:
    """The path segment between ``<results>/`` and a stage folder for a variant's own outputs."""
    return f"{ROOT}/{name}/"


def name_of(prefix: str) -> str | None:
    """The experiment a path prefix (the rules' ``exp`` wildcard) belongs to; None for the main run."""
    return prefix.split("/")[1] if prefix else None


def stage_prefixes(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """experiment -> stage -> path prefix: ``""`` where the variant reuses the main run's output,
    its own folder where the stage (or one upstream) differs. ``"eval"``: the evaluation settings
    alone (a model's evaluation also moves with the stage that trained it: ``eval_prefix``)."""
    main = stage_fingerprints(config)
    main_eval = _digest({k: get_dotted(config, k, None) for k in EVAL_KEYS})
    plan: dict[str, dict[str, str]] = {}
    for name in config.get("experiments", {}):
        variant = variant_config(config, name)
        prints = stage_fingerprints(variant)
        own = variant_prefix(name)
        prefixes = {stage: ("" if prints[stage] == main[stage] else own) for stage in STAGES}
        eval_same = _digest({k: get_dotted(variant, k, None) for k in EVAL_KEYS}) == main_eval
        prefixes["eval"] = "" if eval_same else own  # per model, see ``eval_prefix``
        if not any(prefixes.values()):
            raise ExperimentError(
                f"config experiments.{name}: its overrides change nothing the workflow computes"
                " (every stage equals the main run's)"
            )
        plan[name] = prefixes
    return plan


def rerun_stages(config: dict[str, Any], name: str) -> list[str]:
    """The stages experiment ``name`` computes itself (the rest it reads from the main run)."""
    return [stage for stage, prefix in stage_prefixes(config)[name].items() if prefix]


# Which stage trains an evaluated model (config ``eval.models.<m>.trained``); other models are
# built or downloaded, shared by every variant.
TRAINED_BY = {"student": "sft_scalediff", "student_original": "sft_original", "generator": "diffgen_train"}


def eval_prefix(prefixes: dict[str, str], model_ref: dict[str, Any]) -> str:
    """Where a variant's evaluation of one model lives: the variant's folder if an evaluation
    setting differs or the model is trained by a stage the variant recomputes, else the main run's."""
    stage = TRAINED_BY.get(model_ref.get("trained", ""))
    return prefixes["eval"] or (prefixes[stage] if stage else "")
