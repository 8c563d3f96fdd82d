"""plan: the preflight planner. Will every GPU job of this config fit, and what will the run cost?

The ``preflight`` rule (rules/plan.smk) runs first in every DAG; every GPU rule depends on its
``plan.json``. From each model's own ``config.json`` (a twin plans with the real model's; Hub ids not
on this machine with ``config/model_facts.yaml``) and the resources the SLURM profile requests
(``profiles/slurm/config.yaml`` through yte, as ``profiles/slurm-cluster/config.yaml`` loads it, with
``cluster.preset``), it works out:

* per vLLM rule: weights + KV cache bytes per token -> sequences of the stage's length that fit at
  ``gpu_memory_utilization``; ``max_model_len`` against the model's positions (vLLM refuses more);
* per training rule: model states under the DeepSpeed ZeRO stage (DeepSpeed's own estimators),
  activations of micro-batch x cutoff with and without gradient checkpointing for the attention
  implementation, logits, communication buffers -> GiB per GPU; ranks x a loading copy of the
  weights -> host memory per node against ``mem_mb``;
* per stage: tokens to generate or train on, GPU-hours from the throughput model of
  ``cluster.gpu_types``, jobs x start-up, wall time at the profile's concurrency, and each job's
  runtime against the runtime it requests.

What cannot fit is an error (exit 1 before any GPU job is submitted, naming the rule, the need and the
limit; ``plan.enforce: false`` makes errors warnings); start-up above ``plan.startup_warn_share`` of a
job's work is a warning. Snakemake ``benchmark:`` files of earlier jobs (``<results>/benchmarks``)
calibrate host memory and are checked against what the profile requests. All figures are estimates;
every input is printed in the plan.

    python -m scalediff.plan --configfile config/paper.yaml --markdown plan.md --json plan.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

GiB = 2**30
MiB = 2**20
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
TRAIN_RULES = ("diffgen_train", "sft_train")
# A trained model has its base's dimensions (plus the run's config edits).
TRAINED_BASE = {"student": "student_base", "student_original": "student_base", "generator": "generator_base"}
# Approximate tokens of the fixed text around a problem (chat template markers, role names).
TEMPLATE_TOKENS = 12
CHARS_PER_TOKEN = 4.0  # for the instruction strings of the config (no tokenizer of the real models here)
# Start-up is worth a warning only where it adds up: below one GPU-hour per stage shards cost little.
MIN_WASTE_S = 3600
# A time-boxed training segment (``segment_minutes``) ends after the step in progress and a checkpoint
# save (7B under ZeRO-2: ~100 GB of weights and optimizer states) before the requeue: its margin.
SEGMENT_END_S = 900


class PlanError(Exception):
    """Something the plan cannot be made without (a model's dimensions, a GPU type)."""


# ---------------------------------------------------------------------------------------- models
@dataclass
class Model:
    """A model's dimensions, from its config.json dict, and where they came from."""

    name: str
    source: str
    cfg: dict[str, Any]

    def _int(self, key: str, default: int | None = None) -> int:
        value = self.cfg.get(key)
        if value is None:
            if default is None:
                raise PlanError(f"model {self.name}: config has no {key!r} ({self.source})")
            return default
        return int(value)

    @property
    def hidden(self) -> int:
        return self._int("hidden_size")

    @property
    def layers(self) -> int:
        return self._int("num_hidden_layers")

    @property
    def heads(self) -> int:
        return self._int("num_attention_heads")

    @property
    def kv_heads(self) -> int:
        return self._int("num_key_value_heads", self.heads)

    @property
    def head_dim(self) -> int:
        return self._int("head_dim", self.hidden // self.heads)

    @property
    def inter(self) -> int:
        return self._int("intermediate_size")

    @property
    def vocab(self) -> int:
        return self._int("vocab_size")

    @property
    def positions(self) -> int:
        return self._int("max_position_embeddings")

    @property
    def tied(self) -> bool:
        return bool(self.cfg.get("tie_word_embeddings", False))

    @property
    def model_type(self) -> str:
        return str(self.cfg.get("model_type") or "")

    @property
    def dtype_bytes(self) -> int:
        """Bytes per weight as stored (transformers 5 loads with ``dtype="auto"``: this dtype)."""
        return DTYPE_BYTES.get(str(self.cfg.get("torch_dtype") or self.cfg.get("dtype") or "float32"), 4)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def parameters(self) -> int:
        """Parameter count of a Qwen2/Qwen3-style decoder (qkv bias in qwen2, q/k norms in qwen3)."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        bias = q + 2 * kv if (self.model_type == "qwen2" or self.cfg.get("attention_bias")) else 0
        qk_norm = 2 * self.head_dim if self.model_type == "qwen3" else 0
        layer = h * q + 2 * h * kv + q * h + bias + qk_norm + 3 * h * self.inter + 2 * h
        embed = self.vocab * h * (1 if self.tied else 2)
        return self.layers * layer + embed + h

    def largest_layer_parameters(self) -> int:
        """The largest single module (DeepSpeed ZeRO-3's estimator needs it): the embedding here."""
        h = self.hidden
        return max(self.vocab * h, 3 * h * self.inter)

    def max_len(self) -> tuple[int, str]:
        """The longest context vLLM derives: positions, times a rope scaling factor if one is set."""
        scaling = self.cfg.get("rope_scaling") or self.cfg.get("rope_parameters") or {}
        kind = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
        if kind and kind != "default" and scaling.get("factor"):
            base = int(scaling.get("original_max_position_embeddings") or self.positions)
            return int(base * float(scaling["factor"])), f"{kind} rope scaling x{scaling['factor']}"
        return self.positions, "max_position_embeddings, no rope scaling"

    def kv_bytes_per_token(self, kv_bytes: int) -> int:
        """KV cache per token: layers x KV heads x head_dim x (K and V) x dtype bytes."""
        return self.layers * self.kv_heads * self.head_dim * 2 * kv_bytes

    def activation_bytes_per_token_layer(self, a: int) -> int:
        """Bytes autograd keeps per token per decoder layer (no attention scores), element size ``a``.

        Counted from what torch saves for backward in transformers' Qwen2/Qwen3 layers (checked with
        ``saved_tensors_hooks`` in tests/test_plan.py): the two norms' inputs and outputs (4h) and
        their fp32 copies (8h bytes), q/k/v before and after RoPE and the attention output
        (3q + 3kv), the MLP's gate, up, activation and product (4 x intermediate), the attention
        kernel's log-sum-exp (4 bytes per head); Qwen3's q/k norms add their fp32 and bf16 copies.
        """
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        per = a * (4 * h + 3 * q + 3 * kv + 4 * self.inter) + 8 * h + 4 * self.heads
        if self.model_type == "qwen3":
            per += (4 + a) * (q + kv)
        return per

    def summary(self) -> dict[str, Any]:
        max_len, why = self.max_len()
        return {
            "name": self.name,
            "source": self.source,
            "model_type": self.model_type,
            "parameters": self.parameters(),
            "hidden_size": self.hidden,
            "layers": self.layers,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.inter,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.positions,
            "max_len": max_len,
            "max_len_from": why,
            "rope_theta": self.cfg.get("rope_theta"),
            "tied_embeddings": self.tied,
            "dtype_bytes": self.dtype_bytes,
        }


def _dir_config(path: Path) -> tuple[dict[str, Any], str] | None:
    """A model directory's config: a twin's ``twin.json`` ``real_config`` first, else ``config.json``."""
    twin = path / "twin.json"
    if twin.is_file():
        real = json.loads(twin.read_text()).get("real_config")
        if real:
            return real, f"{twin} (real_config: the real model's config.json)"
    cfg = path / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()), str(cfg)
    return None


def _hub_cache_config(repo_id: str) -> tuple[dict[str, Any], str] | None:
    """The config.json of a Hub model already in the local Hub cache (never downloads)."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - no hub client, malformed id: not in the cache
        return None
    if isinstance(found, str) and os.path.isfile(found):
        return json.loads(Path(found).read_text()), f"Hub cache {found}"
    return None


class Models:
    """Resolves config model references (``tiny``, ``trained``, ``twin``, ``path``) to ``Model``s."""

    def __init__(self, config: dict[str, Any], facts: dict[str, Any]):
        self.config, self.facts = config, facts

    def of_role(self, role: str) -> Model:
        return self.resolve(self.config["models"][role], role)

    def resolve(self, ref: dict[str, Any], label: str) -> Model:
        config = self.config
        if "tiny" in ref:
            tiny = config["tiny"]
            arch = tiny["roles"][ref["tiny"]]["arch"]
            cfg = {
                **tiny["architecture"],
                "vocab_size": tiny["vocab_size"],
                "model_type": arch,
                "tie_word_embeddings": True,
                "torch_dtype": "float32",
            }
            return Model(f"tiny:{ref['tiny']}", "config tiny.architecture (built by rule tiny_model)", cfg)
        if "trained" in ref:
            base_role = TRAINED_BASE[ref["trained"]]
            base = self.of_role(base_role)
            section = config["sft"] if base_role == "student_base" else config["diffgen"]["train"]
            edits = {k: section[k] for k in ("rope_theta", "max_position_embeddings") if section.get(k) is not None}
            edited = "".join(f", {k} {v}" for k, v in edits.items())
            name = f"trained:{ref['trained']} ({base.name}{edited})"
            return Model(name, f"{base.source} + the training run's config edits", {**base.cfg, **edits})
        if "twin" in ref:
            return self._twin(ref["twin"])
        return self._path(ref["path"])

    def _twin(self, hub_id: str) -> Model:
        """A twin plans with the real model's dimensions: the twin's facts, else its built dir, else facts."""
        dirname = hub_id.replace("/", "__")
        twins = self.config.get("twins") or {}
        candidates = [Path(twins["facts"]) / dirname] if twins.get("facts") else []
        candidates.append(Path(self.config["results"]) / "models" / "twins" / dirname)
        for path in candidates:
            found = _dir_config(path)
            if found:
                return Model(f"twin:{hub_id}", found[1], found[0])
        return self._facts(hub_id, f"twin:{hub_id}")

    def _path(self, path: str) -> Model:
        hub = self.config.get("hub") or {}
        if path in (hub.get("revisions") or {}):  # fetched by rules/ref.smk: plan with the download once there
            found = _dir_config(Path(hub.get("dir", "resources/hub")) / "models" / path.replace("/", "__"))
            if found:
                return Model(path, found[1], found[0])
        if os.path.isdir(path):
            found = _dir_config(Path(path))
            if not found:
                raise PlanError(f"model {path}: a directory without config.json")
            return Model(path, found[1], found[0])
        cached = _hub_cache_config(path)
        if cached:
            return Model(path, cached[1], cached[0])
        return self._facts(path, path)

    def _facts(self, hub_id: str, name: str) -> Model:
        entry = self.facts.get(hub_id)
        if not entry:
            raise PlanError(
                f"model {hub_id}: not on disk, not in the Hub cache and not in config/model_facts.yaml:"
                " add its published config.json fields there"
            )
        return Model(name, "config/model_facts.yaml", entry["config"])


# --------------------------------------------------------------------------------------- profile
@dataclass
class Profile:
    """Per-rule resources the SLURM profile requests, and how many jobs it runs at once."""

    set_resources: dict[str, dict[str, Any]]
    default_resources: dict[str, Any]
    retries: int
    jobs: int | None
    source: str

    def resources(self, rule: str) -> dict[str, Any]:
        return {**self.default_resources, **self.set_resources.get(rule, {})}


def load_profile(workflow_profile: str, cluster_profile: str | None, preset: str) -> Profile:
    """Both profiles through yte, as the cluster profile loads the workflow one, with PRESET ``preset``.

    The environment's SCALEDIFF_SLURM_PRESET is set aside while they are read: the plan is for the
    cluster of config ``cluster`` (the CI preset sizes a 2-CPU test scheduler, not that cluster).
    """
    import yte

    aside = {k: os.environ.pop(k) for k in ("SCALEDIFF_SLURM_PRESET",) if k in os.environ}
    try:
        with open(workflow_profile) as f:
            wf = yte.process_yaml(f, variables={"PRESET": preset}, require_use_yte=True) or {}
        cl: dict[str, Any] = {}
        if cluster_profile and os.path.isfile(cluster_profile):
            with open(cluster_profile) as f:
                cl = yte.process_yaml(f, variables={"PRESET": preset}, require_use_yte=True) or {}
    finally:
        os.environ.update(aside)
    return Profile(
        set_resources=wf.get("set-resources") or {},
        default_resources=cl.get("default-resources") or {},
        retries=int(wf.get("retries", cl.get("retries", 0)) or 0),
        jobs=cl.get("jobs"),
        source=f"{workflow_profile} (PRESET {preset})" + (f" + {cluster_profile}" if cl else ""),
    )


def resource_value(value: Any, attempt: int) -> float | None:
    """A profile resource for one attempt: numbers as they are, strings as the Python expressions
    Snakemake evaluates (``"32000 * attempt"``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    result = eval(str(value), {"__builtins__": {}}, {"attempt": attempt})  # noqa: S307 - the repo's own profile
    return float(result) if isinstance(result, (int, float)) else None


# ----------------------------------------------------------------------------------- benchmarks
BENCH_FIELDS = {"s": "wall_s", "max_rss": "max_rss_mb", "cpu_time": "cpu_s"}


def read_benchmarks(root: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """Snakemake ``benchmark:`` files under ``root``: stage -> rule -> jobs, wall, max RSS, CPU time.

    Layout (rules/*.smk): ``<root>/<stage>/<rule>.tsv`` for one-job rules and
    ``<root>/<stage>/<rule>/<wildcards>.tsv`` for rules with many jobs.
    """
    root = Path(root)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not root.is_dir():
        return out
    for tsv in sorted(root.rglob("*.tsv")):
        rel = tsv.relative_to(root).parts
        if len(rel) == 2:
            stage, rule = rel[0], tsv.stem
        elif len(rel) == 3:
            stage, rule = rel[0], rel[1]
        else:
            continue
        try:
            with open(tsv, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except (OSError, csv.Error):
            continue
        stats = out.setdefault(stage, {}).setdefault(
            rule, {"jobs": 0, "wall_s": 0.0, "max_wall_s": 0.0, "max_rss_mb": None, "cpu_s": 0.0}
        )
        for row in rows:
            values = {}
            for col, key in BENCH_FIELDS.items():
                try:
                    values[key] = float(row.get(col) or "nan")
                except ValueError:
                    values[key] = float("nan")
            stats["jobs"] += 1
            if not math.isnan(values["wall_s"]):
                stats["wall_s"] += values["wall_s"]
                stats["max_wall_s"] = max(stats["max_wall_s"], values["wall_s"])
            if not math.isnan(values["max_rss_mb"]):
                stats["max_rss_mb"] = max(stats["max_rss_mb"] or 0.0, values["max_rss_mb"])
            if not math.isnan(values["cpu_s"]):
                stats["cpu_s"] += values["cpu_s"]
    return out


def benchmarks_markdown(bench: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One table: per stage and rule, jobs, wall time (sum, longest job), max RSS, CPU time."""
    if not bench:
        return "_No benchmark files yet (`<results>/benchmarks/`): they appear as jobs finish._\n"
    lines = [
        "| stage | rule | jobs | wall, all jobs | longest job | max RSS | CPU time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for stage in sorted(bench):
        for rule, s in sorted(bench[stage].items()):
            rss = "–" if s["max_rss_mb"] is None else f"{s['max_rss_mb'] / 1024:.2f} GiB"
            lines.append(
                f"| {stage} | {rule} | {s['jobs']} | {_dur(s['wall_s'])} | {_dur(s['max_wall_s'])} | {rss}"
                f" | {_dur(s['cpu_s'])} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- helpers
def _dur(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _tok(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _gib(n: float) -> float:
    return round(n / GiB, 2)


def _text_tokens(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


# ---------------------------------------------------------------------------------------- inputs
class Inputs:
    """Counts, shares and mean lengths the workload is computed from, each with where it came from:
    the config (``plan.counts/shares/mean_tokens``) or a summary an earlier run of this config left in
    the results folder (used only when its scale matches this config's)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        plan = config.get("plan") or {}
        self.values: dict[str, float] = {}
        self.sources: dict[str, str] = {}
        for group in ("shares", "mean_tokens"):
            for key, value in (plan.get(group) or {}).items():
                if isinstance(value, (int, float)):
                    self._set(key, float(value), f"config plan.{group}.{key}")
        self.eval_answer = dict((plan.get("mean_tokens") or {}).get("eval_answer_by_model") or {})
        self._pool_rows(plan)
        self._measured(Path(config["results"]))

    def _set(self, key: str, value: float, source: str) -> None:
        self.values[key], self.sources[key] = value, source

    def __getitem__(self, key: str) -> float:
        if key not in self.values:
            raise PlanError(f"config plan: no value for {key!r}")
        return self.values[key]

    def _pool_rows(self, plan: dict[str, Any]) -> None:
        configured = (plan.get("counts") or {}).get("pool_rows")
        samples = [s.get("sample") for s in self.config["pool"]["sources"]]
        if configured:
            self._set("pool_rows", float(configured), "config plan.counts.pool_rows")
        elif samples and all(samples):
            self._set("pool_rows", float(sum(samples)), "config pool.sources[].sample (sum)")
        else:
            ingest = _read_json(Path(self.config["results"]) / "ingest" / "summary.json")
            if ingest and ingest.get("kept"):
                self._set("pool_rows", float(ingest["kept"]), "measured: ingest/summary.json kept")
            else:
                raise PlanError("config plan.counts.pool_rows: the pool size is unknown (no sample, no ingest yet)")

    def _measured(self, results: Path) -> None:
        """Earlier summaries of this results folder replace configured shares and lengths when they
        describe a run of this scale (a demo run's figures must not size a paper run)."""

        def close(a: float, b: float) -> bool:
            return b > 0 and abs(a - b) / b < 0.1

        select = _read_json(results / "select" / "summary.json")
        if select and select.get("difficult_ratio") is not None and close(select["scored"], self["pool_rows"]):
            self._set("difficult", float(select["difficult_ratio"]), "measured: select/summary.json")
        n_problems = self.config["diffgen"]["sample"]["n_problems"]
        diffgen = _read_json(results / "diffgen" / "summary.json")
        if diffgen and diffgen.get("sampled") and close(diffgen["sampled"], n_problems):
            self._set("generated_kept", diffgen["kept"] / diffgen["sampled"], "measured: diffgen/summary.json")
        distill = _read_json(results / "distill" / "summary.json")
        if (
            distill
            and distill.get("mean_completion_tokens")
            and close(distill.get("problems", 0), n_problems * self.values.get("generated_kept", 1.0))
        ):
            self._set("solution", float(distill["mean_completion_tokens"]), "measured: distill/summary.json")

    def eval_tokens(self, model: str) -> float:
        if model in self.eval_answer:
            return float(self.eval_answer[model])
        return self["eval_answer"]

    def table(self) -> dict[str, dict[str, Any]]:
        return {k: {"value": self.values[k], "source": self.sources[k]} for k in sorted(self.values)}


# ------------------------------------------------------------------------------------- workloads
@dataclass
class EngineWork:
    """One vLLM rule's work: ``jobs`` jobs over ``problems`` prompts, ``samples`` completions each."""

    stage: str
    rule: str
    role: str
    model_ref: dict[str, Any]
    jobs: int
    problems: float
    samples: int
    prompt: float
    out: float
    max_tokens: int
    calls_per_job: int = 0  # generate calls (each ends in a long tail); 0 = from engine.batch_size


@dataclass
class TrainWork:
    stage: str
    rule: str
    role: str
    section: dict[str, Any]
    examples: float
    tokens_per_example: float


def workloads(config: dict[str, Any], inputs: Inputs) -> tuple[list[EngineWork], list[TrainWork]]:
    """Every GPU rule of the DAG with its work, from the config's counts and the inputs."""
    m = config["models"]
    pool = inputs["pool_rows"]
    problem = inputs["problem"] + TEMPLATE_TOKENS
    gen_problem = inputs["generated_problem"] + TEMPLATE_TOKENS
    sample = config["diffgen"]["sample"]
    generated = sample["n_problems"] * inputs["generated_kept"]
    engine: list[EngineWork] = [
        EngineWork(
            "select", "select_shard", "selector", m["selector"], config["select"]["shards"], pool, 1, problem, 1, 1
        ),
        EngineWork(
            "diffgen_sample",
            "diffgen_sample",
            "generator",
            {"trained": "generator"},
            sample["shards"],
            sample["n_problems"],
            1,
            _text_tokens(sample["prompt"]) + 1,
            inputs["generated_problem"],
            sample["max_tokens"],
        ),
    ]
    # The selector's pass over the generated problems: sharded like select where the rules say so.
    shards = config["select"].get("generated_shards", 1)
    rule = "select_generated_shard" if "generated_shards" in config["select"] else "select_generated"
    engine.append(
        EngineWork("select_generated", rule, "selector", m["selector"], shards, generated, 1, gen_problem, 1, 1)
    )
    distill = config["distill"]
    originals = {"none": 0.0, "all": pool, "missing": pool * inputs["original_unsolved"]}[distill["include_original"]]
    instruction = _text_tokens(distill["instruction"])
    engine.append(
        EngineWork(
            "distill",
            "distill_shard",
            "teacher",
            m["teacher"],
            distill["shards"],
            generated + originals,
            distill["n"],
            (generated * gen_problem + originals * problem) / max(generated + originals, 1) + instruction,
            inputs["solution"],
            distill["max_tokens"],
        )
    )
    mb = config["filter"]["model_based"]
    if mb["enabled"]:
        engine.append(
            EngineWork(
                "filter_model",
                "filter_model_shard",
                "student_base",
                m["student_base"],
                mb["shards"],
                generated * inputs["rules_kept"],
                1 if float(mb["temperature"]) == 0.0 else mb["k"],
                gen_problem + _text_tokens(mb.get("instruction", "")),
                inputs["student_answer"],
                mb["max_tokens"],
            )
        )
    ev = config["eval"]
    for name, ref in sorted(ev["models"].items()):
        for _, b in sorted(config["benchmarks"].items()):
            n = _count_lines(b["path"]) or 30
            n = min(n, b["limit"]) if b.get("limit") else n
            batches = math.ceil(n / config["engine"]["batch_size"])
            engine.append(
                EngineWork(
                    f"eval:{name}",
                    "eval_benchmark",
                    f"eval:{name}",
                    ref,
                    1,
                    n * b["seeds"],
                    1,
                    inputs["problem"] + TEMPLATE_TOKENS + _text_tokens(ev["instruction"]),
                    inputs.eval_tokens(name),
                    ev["max_new_tokens"],
                    calls_per_job=b["seeds"] * batches,  # one generate call per seed (scalediff.evaluate)
                )
            )
    train = [
        TrainWork(
            "diffgen_train",
            "diffgen_train",
            "generator_base",
            config["diffgen"]["train"],
            pool * inputs["difficult"],
            inputs["problem"] + 4,
        )
    ]
    original = pool * inputs["original_kept"]
    final_generated = generated * inputs["filter_kept"]
    variants = sorted(
        {
            {"student": "scalediff", "student_original": "original"}[r["trained"]]
            for r in ev["models"].values()
            if r.get("trained", "").startswith("student")
        }
    )
    for variant in variants:
        rows = original + (final_generated if variant == "scalediff" else 0.0)
        tokens = original * (problem + inputs["original_solution"])
        if variant == "scalediff":
            tokens += final_generated * (gen_problem + inputs["solution"])
        train.append(TrainWork(f"sft_{variant}", "sft_train", "student_base", config["sft"], rows, tokens / rows))
    return engine, train


# ---------------------------------------------------------------------------------------- checks
class Findings:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, rule: str, message: str) -> None:
        if f"{rule}: {message}" not in self.errors:  # one line per problem, not per job of a rule
            self.errors.append(f"{rule}: {message}")

    def warn(self, rule: str, message: str) -> None:
        if f"{rule}: {message}" not in self.warnings:
            self.warnings.append(f"{rule}: {message}")


@dataclass
class Gpu:
    name: str
    memory_gib: float
    memory_tb_s: float
    bf16_tflops: float
    vllm_max_num_seqs: int
    train_mfu: float
    prefill_mfu: float
    decode_bandwidth: float
    source: str

    @classmethod
    def from_config(cls, cluster: dict[str, Any]) -> Gpu:
        name = cluster["gpu_type"]
        table = cluster.get("gpu_types") or {}
        if name not in table:
            raise PlanError(f"config cluster.gpu_type {name!r} is not in cluster.gpu_types ({sorted(table)})")
        t = table[name]
        return cls(
            name=name,
            memory_gib=float(cluster.get("gpu_memory_gb") or t["memory_gib"]),
            memory_tb_s=float(t["memory_tb_s"]),
            bf16_tflops=float(t["bf16_tflops"]),
            vllm_max_num_seqs=int(t["vllm_max_num_seqs"]),
            train_mfu=float(t["train_mfu"]),
            prefill_mfu=float(t["prefill_mfu"]),
            decode_bandwidth=float(t["decode_bandwidth"]),
            source=str(t.get("source", "")),
        )


def zero_states(model: Model, ds: dict[str, Any], gpus_per_node: int, nodes: int, load_bytes: int) -> dict[str, Any]:
    """Model states (weights, gradients, optimizer) per GPU and per node's host, by ZeRO stage.

    DeepSpeed's own estimators answer ZeRO-2 and ZeRO-3 (bf16 params + fp32 master, grads and Adam
    states, partitioned over all GPUs); they run without a GPU. ZeRO-1 and plain DDP are counted here
    the same way (HF Trainer without DeepSpeed keeps weights, grads and AdamW states in the load dtype).
    """
    n = model.parameters()
    zero = (ds or {}).get("zero_optimization") or {}
    stage = int(zero.get("stage", 0)) if ds else 0
    offload_opt = ((zero.get("offload_optimizer") or {}).get("device") or "none") != "none"
    offload_param = ((zero.get("offload_param") or {}).get("device") or "none") != "none"
    gpus = gpus_per_node * nodes
    how = "DeepSpeed estimator"
    try:
        if stage == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            cpu, gpu = estimate_zero2_model_states_mem_needs(n, gpus_per_node, nodes, cpu_offload=offload_opt)
            how += " estimate_zero2_model_states_mem_needs"
        elif stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                n,
                model.largest_layer_parameters(),
                gpus_per_node,
                nodes,
                cpu_offload=offload_opt,
                cpu_offload_params=offload_param,
                zero_init=True,
            )
            how += " estimate_zero3_model_states_mem_needs"
    except ImportError:
        stage_fallback = True
    else:
        stage_fallback = stage not in (2, 3)
    if stage_fallback:
        if stage in (2, 3):  # deepspeed not importable: its formulas (non-offload case)
            gpu = 2 * n + 18 * n // gpus if stage == 2 else 4 * model.largest_layer_parameters() + 18 * n // gpus
            cpu = n * 4 * gpus_per_node * 1.5
            how = "DeepSpeed's formula (deepspeed not importable here)"
        elif stage == 1:
            gpu, cpu, how = (
                4 * n + 12 * n // gpus,
                n * 4 * gpus_per_node * 1.5,
                "ZeRO-1: 16-bit params+grads, sharded fp32 states",
            )
        else:
            gpu, cpu = 4 * load_bytes * n, 0
            how = f"no ZeRO: weights, grads, 2 AdamW states in the load dtype ({load_bytes} B)"
    return {"stage": stage, "gpu_bytes": int(gpu), "ds_host_bytes": int(cpu), "how": how}


def comm_buffers(ds: dict[str, Any]) -> tuple[int, str]:
    """ZeRO-2's bucket buffers: (allgather + reduce) bucket elements x 2 bytes, x4.5 with overlap_comm
    (DeepSpeed docs, as the transformers DeepSpeed guide quotes: 5e8 buckets -> 9 GB with overlap)."""
    zero = (ds or {}).get("zero_optimization") or {}
    if int(zero.get("stage", 0) or 0) not in (1, 2):
        return 0, "none"
    elements = float(zero.get("allgather_bucket_size", 5e8)) + float(zero.get("reduce_bucket_size", 5e8))
    factor = 4.5 if zero.get("overlap_comm") else 1.0
    return int(
        elements * 2 * factor
    ), f"buckets {elements:.0e} elements x 2 B x {factor} (overlap_comm={bool(zero.get('overlap_comm'))})"


def train_memory(model: Model, section: dict[str, Any], gpu: Gpu, plan_cfg: dict[str, Any]) -> dict[str, Any]:
    """GiB per GPU of one training rank: states + activations + attention extras + logits + buffers."""
    launch = section["launch"]
    nodes, per_node = int(launch["nodes"]), max(int(launch["gpus_per_node"]), 1)
    ds_path = section.get("deepspeed")
    ds = json.loads(Path(ds_path).read_text()) if ds_path and os.path.isfile(ds_path) else ({} if not ds_path else None)
    if ds is None:
        raise PlanError(f"deepspeed config {ds_path} not found")
    a = 2 if section.get("bf16") else model.dtype_bytes
    states = zero_states(model, ds, per_node, nodes, model.dtype_bytes)
    batch, cutoff = int(section["per_device_batch_size"]), int(section["cutoff"])
    packing = bool(section.get("packing"))
    attn = section.get("attn_implementation", "sdpa")
    gc = bool(section.get("gradient_checkpointing", False))
    liger = bool(section.get("liger_kernel", False))
    # Packed rows of a micro-batch are flattened into one row (train.FlatCollator); unpacked rows are
    # padded to the longest in the batch, worst case the cutoff.
    tokens = batch * cutoff
    rows, length = (1, tokens) if packing else (batch, cutoff)
    per_layer = tokens * model.activation_bytes_per_token_layer(a)
    if attn == "flash_attention_2":
        mask, scores = 0, 0  # varlen kernels, restarting position_ids: no dense mask, no scores
        attn_note = "FlashAttention-2: no L x L tensor"
    elif attn == "eager":
        mask = rows * length * length  # the bool block-causal mask
        scores = rows * model.heads * length * length * (a + 4)  # softmax (fp32) and its cast, per layer
        attn_note = f"eager: per-head scores {rows}x{model.heads}x{length}^2 x {a + 4} B kept per layer"
    else:  # sdpa with a padded or packed (block-diagonal) mask
        mask = rows * length * length
        scores = rows * length * length * a  # the additive mask SDPA derives and keeps per layer
        attn_note = f"sdpa with a dense mask: {rows}x{length}^2 bool + a {a}-byte bias kept per layer"
    no_gc = model.layers * (per_layer + scores) + mask
    with_gc = model.layers * tokens * model.hidden * a + per_layer + scores + mask
    if liger:
        # Fused linear cross-entropy: logits in chunks of next_pow2(T / ceil(V / h)) tokens (fp32 + grad).
        chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(model.vocab / model.hidden)))))
        logits = chunk * model.vocab * 4 * 2 + tokens * model.hidden * a
        logits_note = f"Liger fused linear cross-entropy, chunks of {chunk} tokens"
    else:
        logits = tokens * model.vocab * (a + 4 + 4)
        logits_note = f"{tokens} x {model.vocab} x ({a}-byte output + fp32 copy + fp32 log-softmax)"
    buffers, buffers_note = comm_buffers(ds)
    overhead = float(plan_cfg["train_overhead_gb"]) * GiB
    activations = with_gc if gc else no_gc
    total = states["gpu_bytes"] + activations + logits + buffers + overhead
    return {
        "gpus": nodes * per_node,
        "nodes": nodes,
        "gpus_per_node": per_node,
        "zero_stage": states["stage"],
        "states_gib": _gib(states["gpu_bytes"]),
        "states_how": states["how"],
        "ds_host_per_node_gib": _gib(states["ds_host_bytes"]),
        "tokens_per_micro_batch": tokens,
        "micro_batch": f"{batch} packed rows of {cutoff} as one row"
        if packing
        else f"{batch} rows padded to the longest (at worst {cutoff})",
        "attention": attn,
        "attention_note": attn_note,
        "gradient_checkpointing": gc,
        "activations_gib": _gib(activations),
        "activations_without_gc_gib": _gib(no_gc),
        "activations_with_gc_gib": _gib(with_gc),
        "logits_gib": _gib(logits),
        "logits_note": logits_note,
        "buffers_gib": _gib(buffers),
        "buffers_note": buffers_note,
        "overhead_gib": _gib(overhead),
        "total_gib": _gib(total),
        "gpu_gib": gpu.memory_gib,
        "fits": total <= gpu.memory_gib * GiB,
    }


def engine_settings(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The vLLM settings of one model (a role or an ``eval.models`` name), as rules/common.smk's
    ``engine_settings`` builds them: ``engine`` with the model's ``engine.models`` entry on top."""
    base = {k: v for k, v in config["engine"].items() if k != "models"}
    return base | (config["engine"].get("models") or {}).get(name, {})


def with_overrides(model: Model, eng: dict[str, Any]) -> Model:
    """The model as vLLM sees it: ``hf_overrides`` (e.g. a rope extension) on its config."""
    overrides = eng.get("hf_overrides") or {}
    if not overrides:
        return model
    edited = "".join(f", {k} {v}" for k, v in overrides.items())
    return Model(f"{model.name}{edited}", f"{model.source} + engine hf_overrides", {**model.cfg, **overrides})


def engine_memory(model: Model, eng: dict[str, Any], gpu: Gpu, plan_cfg: dict[str, Any]) -> dict[str, Any]:
    """Weights, KV cache and what fits on one GPU at ``gpu_memory_utilization``."""
    tp = int(eng.get("tensor_parallel_size", 1))
    dtype = eng.get("dtype", "auto")
    wbytes = model.dtype_bytes if dtype == "auto" else DTYPE_BYTES[dtype]
    kv_dtype = eng.get("kv_cache_dtype", "auto")
    kv_bytes = wbytes if kv_dtype == "auto" else DTYPE_BYTES[kv_dtype]
    weights = model.parameters() * wbytes / tp
    budget = gpu.memory_gib * GiB * float(eng.get("gpu_memory_utilization", 0.9))
    overhead = float(plan_cfg["vllm_overhead_gb"]) * GiB
    kv_token = model.kv_bytes_per_token(kv_bytes) / tp
    kv = budget - weights - overhead
    return {
        "tensor_parallel_size": tp,
        "weights_gib": _gib(weights),
        "weight_bytes": wbytes,
        "budget_gib": _gib(budget),
        "overhead_gib": _gib(overhead),
        "kv_cache_gib": _gib(kv),
        "kv_bytes_per_token": int(kv_token),
        "kv_tokens": int(max(kv, 0) / kv_token),
        "max_num_seqs": int(eng.get("max_num_seqs") or gpu.vllm_max_num_seqs),
        "_weights": weights,
        "_kv_token": kv_token,
    }


def engine_time(model: Model, mem: dict[str, Any], gpu: Gpu, prompt: float, out: float, cap: float) -> dict[str, float]:
    """Throughput of one vLLM GPU (a roofline: decode steps read the weights and every running
    sequence's KV cache; prefill is compute-bound) and the time the last sequence of a call runs alone."""
    n = model.parameters()
    flops = gpu.bf16_tflops * 1e12
    bw = gpu.memory_tb_s * 1e12 * gpu.decode_bandwidth
    prefill = flops * gpu.prefill_mfu / (2 * n)
    context = prompt + out / 2  # a running sequence is halfway through on average
    batch = max(1.0, min(mem["max_num_seqs"], mem["kv_tokens"] / max(context, 1.0)))
    step = max((mem["_weights"] + batch * context * mem["_kv_token"]) / bw, 2 * n * batch / (flops * gpu.prefill_mfu))
    alone = (mem["_weights"] + (prompt + cap) * mem["_kv_token"]) / bw
    return {
        "prefill_tps": prefill,
        "decode_tps": batch / step,
        "batch": batch,
        "tail_s": cap * alone if cap > out else 0,
    }


def train_time(model: Model, section: dict[str, Any], gpu: Gpu, example_tokens: float) -> dict[str, float]:
    """Tokens per second per GPU: MFU x peak / FLOPs per token (6N, attention over the attended
    context, one more forward with gradient checkpointing)."""
    attn = section.get("attn_implementation", "sdpa")
    packing = bool(section.get("packing"))
    row = (
        int(section["per_device_batch_size"]) * int(section["cutoff"])
        if packing
        else min(example_tokens, section["cutoff"])
    )
    # Dense-mask kernels compute the whole packed row; FlashAttention only each example's own tokens.
    attended = (example_tokens if attn == "flash_attention_2" or not packing else row) / 2
    per_token = 6 * model.parameters() + 12 * model.layers * model.q_dim * attended
    if section.get("gradient_checkpointing"):
        per_token *= 4 / 3
    return {"tps": gpu.bf16_tflops * 1e12 * gpu.train_mfu / per_token, "flops_per_token": per_token}


# ------------------------------------------------------------------------------------------ plan
def rule_request(profile: Profile, rule: str, config: dict[str, Any], section: dict[str, Any] | None) -> dict[str, Any]:
    res = profile.resources(rule)
    last = profile.retries + 1
    req: dict[str, Any] = {
        "mem_mb": resource_value(res.get("mem_mb"), 1),
        "mem_mb_last": resource_value(res.get("mem_mb"), last),
        "runtime_min": resource_value(res.get("runtime"), 1),
        "runtime_min_last": resource_value(res.get("runtime"), last),
        "attempts": last,
    }
    if section is not None:  # training rules declare nodes and GPUs per node themselves (config launch)
        req["nodes"] = int(section["launch"]["nodes"])
        req["gpus"] = int(section["launch"]["gpus_per_node"])
    else:
        gres = str(res.get("gres") or "")
        gpus = res.get("gpu") or (gres.split(":")[-1] if gres.startswith("gpu") else 0)
        req["nodes"], req["gpus"] = 1, int(gpus or 0)
    return req


def make_plan(
    config: dict[str, Any], profile: Profile, facts: dict[str, Any], benchmarks: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole plan as a JSON-able dict; ``errors`` lists what cannot fit."""
    plan_cfg = config["plan"]
    cluster = config["cluster"]
    gpu = Gpu.from_config(cluster)
    found = Findings()
    inputs = Inputs(config)
    models = Models(config, facts)
    benchmarks = benchmarks or {}
    measured_rss = {rule: s["max_rss_mb"] for stage in benchmarks.values() for rule, s in stage.items()}
    node_mb = float(cluster["node_memory_gb"]) * 1024
    share = float(plan_cfg["startup_warn_share"])
    jobs_limit = profile.jobs or 10**9
    gpu_limit = cluster.get("gpus") or 10**9
    host_overhead = float(plan_cfg["host_overhead_gb"]) * GiB
    engine_startup = float(plan_cfg["engine_startup_s"])
    engine_work, train_work = workloads(config, inputs)

    resolved: dict[str, Model] = {}

    def model_for(role: str, ref: dict[str, Any]) -> Model:
        if role not in resolved:
            resolved[role] = models.resolve(ref, role)
        return resolved[role]

    def check_request(rule: str, req: dict[str, Any], host_need: float, job_s: float, wants_gpus: int) -> None:
        if wants_gpus and not req["gpus"]:
            found.error(rule, f"needs {wants_gpus} GPU(s) but the profile requests none ({profile.source})")
        if req["gpus"] > cluster["gpus_per_node"]:
            found.error(rule, f"needs {req['gpus']} GPUs per node > {cluster['gpus_per_node']} per node (cluster)")
        measured = measured_rss.get(rule)
        need_mb = max(host_need / MiB, measured or 0.0)
        if req["mem_mb"] is not None and need_mb > req["mem_mb"]:
            found.error(
                rule,
                f"host memory: needs {need_mb / 1024:.0f} GiB per node"
                + (f" (measured max RSS {measured / 1024:.1f} GiB)" if measured and measured * MiB >= host_need else "")
                + f" > mem_mb {req['mem_mb']:.0f} MiB ({req['mem_mb'] / 1024:.0f} GiB) the profile requests",
            )
        if req["mem_mb"] is not None and req["mem_mb"] > node_mb:
            found.error(
                rule, f"requests mem_mb {req['mem_mb']:.0f} > a node's {node_mb:.0f} MiB (cluster.node_memory_gb)"
            )
        if req["runtime_min"] is not None and job_s > req["runtime_min"] * 60:
            found.error(
                rule,
                f"runtime: a job needs ~{_dur(job_s)} > the {req['runtime_min']:.0f} min it requests"
                f" (attempt 1; {req['runtime_min_last']:.0f} min at attempt {req['attempts']})",
            )

    rules: dict[str, Any] = {}
    stages: list[dict[str, Any]] = []

    for w in engine_work:
        eng = engine_settings(config, w.role.removeprefix("eval:"))
        model = resolved[w.role] = with_overrides(model_for(w.role, w.model_ref), eng)
        req = rule_request(profile, w.rule, config, None)
        mem = engine_memory(model, eng, gpu, plan_cfg)
        max_len, why = model.max_len()
        mml = int(eng["max_model_len"])
        rule_key = w.rule if not w.stage.startswith("eval:") else f"{w.rule}[{w.stage[5:]}]"
        if mml > max_len:
            found.error(
                rule_key,
                f"engine.max_model_len {mml} > {model.name}'s {max_len} positions ({why}): vLLM refuses to start"
                ' ("User-specified max_model_len ... is greater than the derived max_model_len")',
            )
        if mem["kv_cache_gib"] <= 0:
            found.error(
                rule_key,
                f"GPU memory: weights {mem['weights_gib']} GiB + {mem['overhead_gib']} GiB runtime"
                f" > {mem['budget_gib']} GiB ({eng.get('gpu_memory_utilization', 0.9)} of {gpu.memory_gib} GiB"
                f" {gpu.name})",
            )
        elif mem["kv_tokens"] < mml:
            found.error(
                rule_key,
                f"KV cache holds {mem['kv_tokens']} tokens < max_model_len {mml}: vLLM refuses to start",
            )
        cap = max(1, min(w.max_tokens, mml - int(w.prompt)))
        if w.prompt + w.max_tokens > mml and w.max_tokens > 1:
            found.warn(
                rule_key,
                f"prompt ~{w.prompt:.0f} + max_tokens {w.max_tokens} > max_model_len {mml}:"
                f" completions capped at ~{cap}",
            )
        seq = min(w.prompt + w.max_tokens, mml)
        fit = int(mem["kv_tokens"] // seq) if seq else 0
        out = min(w.out, cap)
        rate = engine_time(model, mem, gpu, w.prompt, out, cap)
        per_job = w.problems / w.jobs
        work = per_job * w.prompt / rate["prefill_tps"] + per_job * w.samples * out / rate["decode_tps"]
        calls = w.calls_per_job or math.ceil(per_job / int(eng["batch_size"]))
        work += calls * rate["tail_s"]
        job_s = engine_startup + work
        gpus_job = mem["tensor_parallel_size"]
        if gpus_job > (req["gpus"] or 0) and req["gpus"]:
            found.error(rule_key, f"tensor_parallel_size {gpus_job} > the {req['gpus']} GPU(s) the profile requests")
        host = mem["_weights"] * gpus_job + host_overhead
        check_request(rule_key, req, host, job_s, gpus_job)
        if engine_startup > share * work and w.jobs * gpus_job * engine_startup >= MIN_WASTE_S:
            found.warn(
                rule_key,
                f"start-up {_dur(engine_startup)} is {engine_startup / max(work, 1e-9):.0%} of a job's"
                f" {_dur(work)} of work (> {share:.0%}): fewer, larger shards",
            )
        rules.setdefault(
            rule_key,
            {
                "kind": "vllm",
                "model": model.name,
                "memory": {k: v for k, v in mem.items() if not k.startswith("_")},
                "max_model_len": mml,
                "model_max_len": max_len,
                "stage_length": seq,
                "sequences_that_fit": fit,
                "host_need_gib": _gib(host),
                "measured_max_rss_gib": _gib(measured_rss[w.rule] * MiB) if measured_rss.get(w.rule) else None,
                "request": req,
            },
        )
        concurrency = max(1, min(jobs_limit, gpu_limit // max(gpus_job, 1)))
        stages.append(
            {
                "stage": w.stage,
                "rule": rule_key,
                "jobs": w.jobs,
                "gpus_per_job": gpus_job,
                "prompt_tokens": w.problems * w.prompt,
                "output_tokens": w.problems * w.samples * out,
                "mean_output": out,
                "decode_tps_per_gpu": rate["decode_tps"],
                "prefill_tps_per_gpu": rate["prefill_tps"],
                "running_sequences": rate["batch"],
                "startup_s": engine_startup,
                "job_work_s": work,
                "job_s": job_s,
                "gpu_hours": w.jobs * gpus_job * job_s / 3600,
                "startup_gpu_hours": w.jobs * gpus_job * engine_startup / 3600,
                "wall_s": math.ceil(w.jobs / concurrency) * job_s,
                "runtime_min": req["runtime_min"],
            }
        )

    for t in train_work:
        label = f"sft_train[{t.stage[4:]}]" if t.rule == "sft_train" else t.rule
        model = model_for(label, {"trained": "student" if t.rule == "sft_train" else "generator"})
        section = t.section
        req = rule_request(profile, t.rule, config, section)
        mem = train_memory(model, section, gpu, plan_cfg)
        on_gpu = int(section["launch"]["gpus_per_node"]) > 0  # 0: the config trains on CPU
        if on_gpu and not mem["fits"]:
            found.error(
                label,
                f"GPU memory: needs {mem['total_gib']:.0f} GiB per GPU (states {mem['states_gib']} + activations"
                f" {mem['activations_gib']}{'' if mem['gradient_checkpointing'] else ' without gradient checkpointing'}"
                f" + logits {mem['logits_gib']} + buffers {mem['buffers_gib']} + {mem['overhead_gib']} runtime;"
                f" {mem['tokens_per_micro_batch']} tokens per micro-batch, {mem['attention']})"
                f" > {gpu.memory_gib} GiB ({gpu.name})",
            )
        if section["cutoff"] > model.positions:
            found.warn(label, f"cutoff {section['cutoff']} > the model's {model.positions} positions")
        mean_len = min(t.tokens_per_example, section["cutoff"])
        rate = train_time(model, section, gpu, mean_len)
        epochs = float(section["epochs"])
        tokens = t.examples * mean_len
        train_s = tokens * epochs / (rate["tps"] * mem["gpus"])
        # SFT's token lengths come from the CPU rule sft_data; DiffGen's short problems are tokenized in the job.
        tokenize_s = 0.0 if t.rule == "sft_train" else tokens / float(plan_cfg["tokenize_tokens_per_s"])
        prep = float(plan_cfg["train_startup_s"]) + tokenize_s
        # Time-boxed segments: each job (a requeue of the same one) trains segment_minutes, then saves;
        # the runtime asked is checked against one segment, the GPU-hours count every segment's start-up.
        segment_s = float(section.get("segment_minutes") or 0) * 60
        segments = max(1, math.ceil(train_s / segment_s)) if segment_s else 1
        if segments > 1:
            one_job_s = prep + segment_s + SEGMENT_END_S
            job_s = segments * (prep + SEGMENT_END_S) + train_s
        else:
            one_job_s = job_s = prep + train_s
        host = mem["gpus_per_node"] * (model.parameters() * model.dtype_bytes + host_overhead)
        if not on_gpu:  # one process holds all of it in host memory
            host = model.parameters() * model.dtype_bytes + host_overhead + mem["total_gib"] * GiB
        check_request(label, req, host, one_job_s, mem["gpus"] if on_gpu else 0)
        if prep > share * train_s and mem["gpus"] * prep >= MIN_WASTE_S:
            found.warn(
                label, f"start-up {_dur(prep)} is {prep / max(train_s, 1e-9):.0%} of the {_dur(train_s)} of training"
            )
        rules[label] = {
            "kind": "training",
            "rule": label,
            "model": model.name,
            "memory": mem,
            "host_need_gib": _gib(host),
            "host_need_note": f"{mem['gpus_per_node']} ranks x ({model.parameters() / 1e9:.2f}B x"
            f" {model.dtype_bytes} B loading copy + {plan_cfg['host_overhead_gb']} GiB)",
            "measured_max_rss_gib": _gib(measured_rss[t.rule] * MiB) if measured_rss.get(t.rule) else None,
            "request": req,
        }
        stages.append(
            {
                "stage": t.stage,
                "rule": t.rule,
                "jobs": 1,
                "gpus_per_job": mem["gpus"],
                "examples": t.examples,
                "train_tokens": tokens * epochs,
                "epochs": epochs,
                "train_tps_per_gpu": rate["tps"],
                "startup_s": prep,
                "job_work_s": train_s,
                "job_s": job_s,
                "segments": segments,
                "segment_job_s": one_job_s,
                "gpu_hours": mem["gpus"] * job_s / 3600,
                "startup_gpu_hours": mem["gpus"] * segments * prep / 3600,
                "wall_s": job_s,
                "runtime_min": req["runtime_min"],
            }
        )

    # The other rules (CPU work: ingest, filter_rules, gathers, report): what earlier jobs measured against
    # what the profile asks now. Warnings only: the measured run may have been of another scale.
    planned = {w.rule for w in engine_work} | {t.rule for t in train_work}
    for by_rule in benchmarks.values():
        for rule, measured in sorted(by_rule.items()):
            if rule in planned:
                continue
            req = rule_request(profile, rule, config, None)
            rss = measured["max_rss_mb"]
            if rss and req["mem_mb"] and rss > req["mem_mb"]:
                found.warn(rule, f"measured max RSS {rss / 1024:.1f} GiB > mem_mb {req['mem_mb']:.0f} MiB it requests")
            if req["runtime_min"] and measured["max_wall_s"] > req["runtime_min"] * 60:
                found.warn(
                    rule, f"a job took {_dur(measured['max_wall_s'])} > the {req['runtime_min']:.0f} min it requests"
                )
    stages = _merge_eval(stages)
    order = ["select", "diffgen_train", "diffgen_sample", "distill", "filter_model"]
    sft = [s["wall_s"] for s in stages if s["stage"].startswith("sft_")]
    critical = sum(s["wall_s"] for s in stages if s["stage"] in order) + max(sft, default=0)
    critical += next((s["wall_s"] for s in stages if s["stage"] == "eval"), 0)
    return {
        "ok": not found.errors,
        "errors": found.errors,
        "warnings": found.warnings,
        "cluster": {
            "gpu": gpu.__dict__,
            "gpus_per_node": cluster["gpus_per_node"],
            "node_memory_gb": cluster["node_memory_gb"],
            "gpus_available": cluster.get("gpus"),
            "jobs_at_once": profile.jobs,
            "profile": profile.source,
        },
        "inputs": inputs.table(),
        "plan_settings": {k: v for k, v in plan_cfg.items() if k not in ("shares", "mean_tokens", "counts")},
        "models": {role: m.summary() for role, m in resolved.items()},
        "rules": rules,
        "stages": stages,
        "totals": {
            "gpu_hours": sum(s["gpu_hours"] for s in stages),
            "startup_gpu_hours": sum(s["startup_gpu_hours"] for s in stages),
            "critical_path_wall_s": critical,
        },
        "benchmarks": benchmarks,
    }


def _merge_eval(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``eval`` stage from the per (model, benchmark) jobs; the per-model rows stay as details."""
    evals = [s for s in stages if s["stage"].startswith("eval:")]
    rest = [s for s in stages if not s["stage"].startswith("eval:")]
    if not evals:
        return rest
    merged = {
        "stage": "eval",
        "rule": "eval_benchmark",
        "jobs": len(evals),
        "gpus_per_job": evals[0]["gpus_per_job"],
        "prompt_tokens": sum(s["prompt_tokens"] for s in evals),
        "output_tokens": sum(s["output_tokens"] for s in evals),
        "decode_tps_per_gpu": min(s["decode_tps_per_gpu"] for s in evals),
        "prefill_tps_per_gpu": min(s["prefill_tps_per_gpu"] for s in evals),
        "startup_s": evals[0]["startup_s"],
        "job_work_s": max(s["job_work_s"] for s in evals),
        "job_s": max(s["job_s"] for s in evals),
        "gpu_hours": sum(s["gpu_hours"] for s in evals),
        "startup_gpu_hours": sum(s["startup_gpu_hours"] for s in evals),
        "wall_s": max(s["job_s"] for s in evals),
        "runtime_min": evals[0]["runtime_min"],
        "per_model": {s["stage"][5:]: {"gpu_hours": 0.0, "jobs": 0} for s in evals},
    }
    for s in evals:
        entry = merged["per_model"][s["stage"][5:]]
        entry["gpu_hours"] += s["gpu_hours"]
        entry["jobs"] += 1
    return rest + [merged]


# -------------------------------------------------------------------------------------- markdown
def render_markdown(plan: dict[str, Any]) -> str:
    c = plan["cluster"]
    g = c["gpu"]
    lines = ["# Preflight plan", ""]
    if plan["errors"]:
        lines += [f"**FAILS: {len(plan['errors'])} problem(s) would stop GPU jobs.** Fix them before submitting.", ""]
        lines += [f"- ERROR {e}" for e in plan["errors"]] + [""]
    else:
        lines += ["**Every GPU rule fits its GPU, host memory and runtime.**", ""]
    if plan["warnings"]:
        lines += [f"- warning {w}" for w in plan["warnings"]] + [""]
    t = plan["totals"]
    gpus = f", at most {c['gpus_available']} GPUs" if c["gpus_available"] else ""
    lines += [
        f"Cluster: {g['name']} ({g['memory_gib']} GiB, {g['memory_tb_s']} TB/s, {g['bf16_tflops']:.0f} bf16 TFLOPS),"
        f" {c['gpus_per_node']} GPUs and {c['node_memory_gb']} GiB per node; {c['jobs_at_once'] or 'unlimited'}"
        f" jobs at once{gpus}; resources from {c['profile']}.",
        "",
        f"**Total: {t['gpu_hours']:,.0f} GPU-hours** ({t['startup_gpu_hours']:,.0f} of them engine/training start-up);"
        f" critical path ~{_dur(t['critical_path_wall_s'])} of wall time.",
        "",
        "## Stages",
        "",
        "| stage | rule | jobs x GPUs | tokens | throughput / GPU | start-up | job (work) | runtime asked"
        " | GPU-hours | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in plan["stages"]:
        if "train_tokens" in s:
            tokens = f"{_tok(s['train_tokens'])} trained ({s['epochs']:g} ep.)"
            rate = f"{s['train_tps_per_gpu']:,.0f} tok/s"
        else:
            tokens = f"{_tok(s['prompt_tokens'])} in, {_tok(s['output_tokens'])} out"
            rate = f"{s['prefill_tps_per_gpu']:,.0f} in, {s['decode_tps_per_gpu']:,.0f} out tok/s"
        asked = "–" if s["runtime_min"] is None else _dur(s["runtime_min"] * 60)
        if s.get("segments", 1) > 1:  # the runtime asked bounds one segment, not the run
            asked += f" per segment ({s['segments']} x ~{_dur(s['segment_job_s'])})"
        lines.append(
            f"| {s['stage']} | {s['rule']} | {s['jobs']} x {s['gpus_per_job']} | {tokens} | {rate}"
            f" | {_dur(s['startup_s'])}"
            f" | {_dur(s['job_s'])} ({_dur(s['job_work_s'])}) | {asked} | {s['gpu_hours']:,.1f} | {_dur(s['wall_s'])} |"
        )
    evals = next((s for s in plan["stages"] if s["stage"] == "eval"), None)
    if evals:
        per = ", ".join(f"{m}: {v['gpu_hours']:,.1f}" for m, v in evals["per_model"].items())
        lines += ["", f"Eval GPU-hours per model: {per}."]
    lines += [
        "",
        "## GPU memory: vLLM rules",
        "",
        "| rule | model | weights | KV cache | KV / token | KV tokens | max_model_len / model | stage length"
        " | sequences fit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in plan["rules"].items():
        if r["kind"] != "vllm":
            continue
        m = r["memory"]
        lines.append(
            f"| {name} | {r['model']} | {m['weights_gib']} GiB | {m['kv_cache_gib']} GiB"
            f" | {m['kv_bytes_per_token'] / 1024:.0f} KiB"
            f" | {m['kv_tokens']:,} | {r['max_model_len']} / {r['model_max_len']} | {r['stage_length']:.0f}"
            f" | {r['sequences_that_fit']} (max_num_seqs {m['max_num_seqs']}) |"
        )
    lines += [
        "",
        "## GPU memory: training rules (GiB per GPU)",
        "",
        "| rule | model | GPUs | ZeRO states | activations (GC / no GC) | logits | buffers + runtime | total / GPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in plan["rules"].items():
        if r["kind"] != "training":
            continue
        m = r["memory"]
        gc = "GC on" if m["gradient_checkpointing"] else "GC off"
        lines.append(
            f"| {name} | {r['model']} | {m['nodes']}x{m['gpus_per_node']} | {m['states_gib']} (ZeRO-{m['zero_stage']})"
            f" | {m['activations_with_gc_gib']} / {m['activations_without_gc_gib']} ({gc}, {m['attention']})"
            f" | {m['logits_gib']} | {m['buffers_gib']} + {m['overhead_gib']} | **{m['total_gib']}** / {m['gpu_gib']} |"
        )
    for name, r in plan["rules"].items():
        if r["kind"] == "training":
            m = r["memory"]
            lines += [
                "",
                f"{name}: {m['tokens_per_micro_batch']} tokens per micro-batch ({m['micro_batch']});"
                f" {m['attention_note']};"
                f" logits: {m['logits_note']};"
                f" states: {m['states_how']}; buffers: {m['buffers_note']}.",
            ]
    lines += [
        "",
        "## Host memory per node",
        "",
        "| rule | needs | measured max RSS | mem_mb asked (attempt 1 / last) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in plan["rules"].items():
        req = r["request"]
        asked = "–" if req["mem_mb"] is None else f"{req['mem_mb'] / 1024:.0f} / {req['mem_mb_last'] / 1024:.0f} GiB"
        measured = "–" if r["measured_max_rss_gib"] is None else f"{r['measured_max_rss_gib']} GiB"
        lines.append(f"| {name} | {r['host_need_gib']} GiB | {measured} | {asked} |")
    lines += [
        "",
        "## Models",
        "",
        "| role | model | parameters | layers | hidden | heads / KV | head_dim | vocab | positions | source |",
    ]
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for role, m in plan["models"].items():
        lines.append(
            f"| {role} | {m['name']} | {m['parameters'] / 1e9:.2f}B | {m['layers']} | {m['hidden_size']}"
            f" | {m['heads']} / {m['kv_heads']}"
            f" | {m['head_dim']} | {m['vocab_size']} | {m['max_len']} | {m['source']} |"
        )
    lines += ["", "## Inputs", "", "| input | value | from |", "|---|---:|---|"]
    for key, v in plan["inputs"].items():
        lines.append(f"| {key} | {v['value']:,.4g} | {v['source']} |")
    lines += ["", "Planner settings: " + ", ".join(f"`{k}`={v}" for k, v in plan["plan_settings"].items()) + "."]
    lines += ["", f"GPU figures: {g['source']}."]
    lines += [
        "",
        "## Measured (Snakemake benchmark files of earlier jobs)",
        "",
        benchmarks_markdown(plan["benchmarks"]),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- cli
def load_config(path: str, schema: str) -> dict[str, Any]:
    """A config file validated against the schema, its defaults filled in (as the workflow does)."""
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    validate(config, os.path.abspath(schema))
    return config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Preflight plan: GPU and host memory, GPU-hours, runtimes.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--settings", help="the validated workflow config as JSON (the preflight rule)")
    src.add_argument("--configfile", help="a config YAML, validated against --schema")
    ap.add_argument("--schema", default="config/schema.yaml")
    ap.add_argument("--profile", default="profiles/slurm/config.yaml", help="workflow profile (per-rule resources)")
    ap.add_argument("--cluster-profile", default="profiles/slurm-cluster/config.yaml", help="jobs at once, defaults")
    ap.add_argument("--facts", default="config/model_facts.yaml")
    ap.add_argument("--benchmarks", default=None, help="benchmark folder (default: <results>/benchmarks)")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    from scalediff.records import atomic_path, write_json

    config = json.loads(args.settings) if args.settings else load_config(args.configfile, args.schema)
    facts = yaml.safe_load(Path(args.facts).read_text()) if os.path.isfile(args.facts) else {}
    bench = read_benchmarks(args.benchmarks or Path(config["results"]) / "benchmarks")
    try:
        profile = load_profile(args.profile, args.cluster_profile, config["cluster"].get("preset", "full"))
        plan = make_plan(config, profile, facts, bench)
    except PlanError as exc:
        log.error("preflight: %s", exc)
        return 1
    text = render_markdown(plan)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(text)
    if args.json:
        write_json(plan, args.json)
    sys.stderr.write(text)
    for w in plan["warnings"]:
        log.warning("preflight: %s", w)
    for e in plan["errors"]:
        log.error("preflight: %s", e)
    if plan["errors"] and config["plan"].get("enforce", True):
        log.error(
            "preflight: %d problem(s) would stop GPU jobs; nothing was submitted (plan above; plan.enforce: false"
            " reports them without stopping)",
            len(plan["errors"]),
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
