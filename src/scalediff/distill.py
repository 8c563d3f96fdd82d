"""distill: the teacher writes long chain-of-thought solutions (Qwen3 thinking mode).

One user turn: the instruction (SPEC §3) + problem, rendered by the teacher's own chat template
with ``enable_thinking=True``. ``n`` samples per problem; every sample row keeps the problem id,
sample index, full completion, finish reason, token counts and the extracted final answer.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalediff import cli
from scalediff.answers import final_answer
from scalediff.engine import Completion, Engine, ShardJob, run_shard
from scalediff.records import (
    ShardCheckpoint,
    concat_parquet,
    iter_batches,
    num_rows,
    parse_scatteritem,
    read_many,
    read_range,
    shard_slice,
    text_defect,
    write_json,
    write_rejects,
    write_rows,
)

log = logging.getLogger(__name__)

SOLUTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sample", pa.int32(), nullable=False),
        pa.field("problem", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("completion", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("answer", pa.string()),
    ]
)


PROBLEM_COLUMNS = ["id", "problem", "origin", "source"]


def _originals(pool: str, include_original: str) -> np.ndarray:
    """Row numbers of the pool problems the config asks the teacher to solve; "missing" streams
    the pool's solution column one row group at a time (8 bytes kept per problem without one)."""
    if include_original == "all":
        return np.arange(num_rows(pool))
    if include_original != "missing":
        return np.arange(0)
    found, offset = [np.arange(0)], 0
    for batch in iter_batches(pool, columns=["solution"]):
        solution = pc.utf8_trim_whitespace(pc.fill_null(batch["solution"], ""))
        found.append(pc.indices_nonzero(pc.equal(pc.utf8_length(solution), 0)).to_numpy() + offset)
        offset += batch.num_rows
    return np.concatenate(found).astype(np.int64)


def problems_to_solve(
    generated: str, pool: str, include_original: str, shard: int, n_shards: int
) -> list[dict[str, Any]]:
    """One shard of: the generated problems, then the original ones the config asks the teacher to
    solve. Only the problem columns of the shard's own rows are read (a few MB per shard, where
    whole tables were ~1 GB of generated problems and ~14 GB of pool solutions at paper scale)."""
    n_generated, originals = num_rows(generated), _originals(pool, include_original)
    part = shard_slice(n_generated + len(originals), shard, n_shards)
    tables = [read_range(generated, part.start, min(part.stop, n_generated), PROBLEM_COLUMNS)]
    rows = originals[max(part.start - n_generated, 0) : max(part.stop - n_generated, 0)]
    if len(rows):
        span = read_range(pool, int(rows[0]), int(rows[-1]) + 1, PROBLEM_COLUMNS)
        tables.append(span.take(pa.array(rows - rows[0])))
    return pa.concat_tables(tables).to_pylist()


def solution_rows(job: ShardJob, comps: list[Completion]) -> list[dict[str, Any]]:
    return [
        {
            **job.payload,
            "sample": i,
            "completion": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "answer": final_answer(c.text),
        }
        for i, c in enumerate(comps)
    ]


def distill_shard(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    cfg = settings["distill"]
    shard, n_shards = parse_scatteritem(args.shard)
    problems = problems_to_solve(args.generated, args.pool, cfg["include_original"], shard, n_shards)
    engine = Engine(args.model, settings["engine"], seed=settings["seed"] + shard)
    jobs, rejects = [], []
    for p in problems:
        if defect := text_defect(p.get("problem")):
            rejects.append({"stage": "distill", "id": p.get("id"), "field": "problem", "reason": defect})
            continue
        prompt = engine.chat_prompt(
            [{"role": "user", "content": cfg["instruction"] + p["problem"]}], enable_thinking=cfg["enable_thinking"]
        )
        if not engine.fits(prompt, 1):
            rejects.append(
                {
                    "stage": "distill",
                    "id": p["id"],
                    "field": "problem",
                    "reason": f"prompt of {len(prompt)} tokens exceeds max_model_len {engine.max_model_len}",
                }
            )
            continue
        payload = {"id": p["id"], "problem": p["problem"], "origin": p["origin"], "source": p["source"]}
        jobs.append(ShardJob(key=p["id"], prompt=prompt, payload=payload))
    # vLLM rejects prompt + max_tokens > max_model_len: cap per shard at what the longest prompt leaves.
    longest = max((len(j.prompt) for j in jobs), default=0)
    max_tokens = min(cfg["max_tokens"], settings["engine"]["max_model_len"] - longest)
    sampling = {k: cfg[k] for k in ("temperature", "top_p", "top_k", "n") if k in cfg} | {"max_tokens": max_tokens}
    rows = run_shard(
        engine,
        jobs,
        sampling,
        solution_rows,
        args.output,
        base_seed=settings["seed"] + shard,
        batch_size=settings["engine"]["batch_size"],
    )
    for r in rows:
        r.pop("key", None)
    write_rows(rows, args.output, SOLUTION_SCHEMA)
    write_rejects(rejects, args.rejects)
    ShardCheckpoint(args.output).discard()
    log.info(
        "distill shard %s: %d problems, %d samples, %d quarantined, finish %s",
        args.shard,
        len(problems),
        len(rows),
        len(rejects),
        dict(Counter(r["finish_reason"] for r in rows)),
    )


def gather(args: argparse.Namespace) -> None:
    """Join the shards by streaming them (paper scale is tens of GB of solutions); the summary is
    computed from the small columns only."""
    samples = concat_parquet(args.shards, args.output, SOLUTION_SCHEMA)
    rejects = read_many(args.shard_rejects)
    write_rejects(rejects, args.rejects)
    small = pq.read_table(args.output, columns=["id", "origin", "finish_reason", "answer", "completion_tokens"])
    summary = {
        "samples": samples,
        "problems": pc.count_distinct(small["id"]).as_py(),
        "by_origin": _value_counts(small["origin"]),
        "finish_reason": _value_counts(small["finish_reason"]),
        "with_boxed_answer": samples - small["answer"].null_count,
        "mean_completion_tokens": pc.mean(small["completion_tokens"]).as_py() if samples else None,
        "quarantined": len(rejects),
    }
    write_json(summary, args.summary)
    log.info("distill gather: %s", summary)


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    return {v["values"]: v["counts"] for v in pc.value_counts(column).to_pylist()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Teacher solutions in thinking mode.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard")
    s.add_argument("--generated", required=True)
    s.add_argument("--pool", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--shard", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--rejects", required=True)
    cli.add_settings_argument(s)
    cli.add_gather_parser(sub)
    args = ap.parse_args(argv)
    cli.setup_logging()
    if args.cmd == "shard":
        distill_shard(args, cli.load_settings(args))
    else:
        gather(args)


if __name__ == "__main__":
    main()
