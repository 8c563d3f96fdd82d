"""Benchmark: the engine layer vs raw vLLM, and the selector's cost vs a prefill-only pass.

Prints figures and ratios (not a test). Usage:
    .venv/bin/python bench/engine_overhead.py --model results/models/tiny/selector --problems 2000

1. select: generated tokens per problem (must be 1) and wall time of `scalediff.select` scoring vs a
   bare vLLM pass with max_tokens=1 and no logprobs over the same prompts ("prefill-only").
2. engine overhead: `Engine.generate` vs `vllm.LLM.generate` on the same token prompts and sampling
   parameters (goal: ratio <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "config" / "data" / "pool"
# The embedded default's engine settings (CPU: whole-prompt prefill, eager), with a bigger KV cache.
ENGINE = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text())["engine"], "cpu_kv_cache_gb": 2}


def problems(n: int) -> list[str]:
    texts = []
    for name in ("math_train.jsonl", "aime_1983_2023.jsonl"):
        with open(POOL / name) as fh:
            texts += [json.loads(line)["problem"] for line in fh]
    return (texts * math.ceil(n / len(texts)))[:n]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from scalediff.engine import Engine
    from scalediff.select import NOTHINK, score_row

    engine = Engine(args.model, ENGINE, seed=0)
    # Distinct prompts: prefix caching must not turn repeats into free hits, so bust it per round.
    texts = problems(args.problems)
    nothink = engine.token_id(NOTHINK)

    def prompts(round_: int) -> list[list[int]]:
        return [engine.chat_prompt([{"role": "user", "content": f"[{round_}] {t}"}]) for t in texts]

    raw_params = SamplingParams(temperature=0.0, max_tokens=1)
    rows = []
    for r in range(args.repeats):
        p_sel, p_raw = prompts(2 * r), prompts(2 * r + 1)
        outs, t_select = timed(engine.generate, p_sel, {"temperature": 0.0, "max_tokens": 1, "logprobs": 20})
        scored = [score_row(_Job(i), o, nothink, None) for i, o in enumerate(outs)]
        _, t_prefill = timed(
            engine.llm.generate, [TokensPrompt(prompt_token_ids=p) for p in p_raw], raw_params, use_tqdm=False
        )
        tokens_per_problem = sum(o[0].completion_tokens for o in outs) / len(outs)
        rows.append((t_select, t_prefill, tokens_per_problem, sum(s[0]["difficult"] for s in scored)))

    sample = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 64}
    over = []
    for r in range(args.repeats):
        p_a, p_b = prompts(100 + 2 * r), prompts(101 + 2 * r)
        _, t_engine = timed(engine.generate, p_a, sample, seeds=list(range(len(p_a))))
        raw = [SamplingParams(**sample, seed=i, skip_special_tokens=False) for i in range(len(p_b))]
        _, t_raw = timed(engine.llm.generate, [TokensPrompt(prompt_token_ids=p) for p in p_b], raw, use_tqdm=False)
        over.append((t_engine, t_raw))

    best = min(rows)
    print(f"problems: {args.problems}  model: {args.model}")
    print(f"select: generated tokens per problem = {best[2]:.3f} (must be 1); difficult = {best[3]}")
    print(
        f"select: {best[0]:.2f}s vs prefill-only {best[1]:.2f}s -> ratio {best[0] / best[1]:.3f} "
        f"({args.problems / best[0]:.0f} problems/s)"
    )
    e, w = min(o[0] for o in over), min(o[1] for o in over)
    print(
        f"engine overhead: Engine.generate {e:.2f}s vs vllm.LLM.generate {w:.2f}s -> ratio {e / w:.3f} (goal <= 1.05)"
    )


class _Job:
    def __init__(self, i: int):
        self.payload = {"id": str(i)}


if __name__ == "__main__":
    main()
