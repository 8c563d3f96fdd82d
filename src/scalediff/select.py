"""select: difficulty identification with an AdaptThink-style selector, one forward pass each.

The selector reads the problem through its own chat template (which opens ``<think>``). If its
greedy first token is ``</think>`` it would skip thinking: the problem is *simple*; otherwise it
is *difficult*. vLLM generates exactly one token per problem (``max_tokens=1``) and returns the
top-k logprobs, from which ``p_nothink`` = P(first token is ``</think>``) is kept as a continuous
difficulty score. The ``</think>`` id is looked up from the tokenizer, never hard-coded.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalediff import cli
from scalediff.engine import Completion, Engine, ShardJob, run_shard
from scalediff.records import (
    ShardCheckpoint,
    atomic_path,
    concat_parquet,
    parse_scatteritem,
    read_many,
    read_shard,
    seeded_rank,
    text_defect,
    write_json,
    write_rejects,
    write_rows,
)

log = logging.getLogger(__name__)

NOTHINK = "</think>"

SCORE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("difficult", pa.bool_(), nullable=False),
        pa.field("p_nothink", pa.float64(), nullable=False),
        pa.field("first_token", pa.string()),
        pa.field("top_tokens", pa.string()),  # JSON {token: logprob} of the first position
    ]
)


def is_difficult(p_nothink: float, first_is_nothink: bool, threshold: float | None) -> bool:
    """Argmax rule by default (simple iff greedy token is </think>); a threshold on p otherwise."""
    if threshold is None:
        return not first_is_nothink
    return p_nothink < threshold


def score_row(job: ShardJob, comps: list[Completion], nothink_id: int, threshold: float | None) -> list[dict[str, Any]]:
    comp = comps[0]
    by_id = comp.first_logprobs_by_id or {}
    # Below the top-k, P(</think>) is smaller than the k-th probability: 0 is the honest floor.
    p = math.exp(by_id[nothink_id]) if nothink_id in by_id else 0.0
    first_is_nothink = bool(comp.token_ids) and comp.token_ids[0] == nothink_id
    return [
        {
            "id": job.payload["id"],
            "difficult": is_difficult(p, first_is_nothink, threshold),
            "p_nothink": p,
            "first_token": NOTHINK if first_is_nothink else (comp.text or None),
            "top_tokens": json.dumps(comp.first_logprobs or {}, ensure_ascii=False),
        }
    ]


def run(
    problems: list[dict[str, Any]], model: str, settings: dict[str, Any], output: str, rejects_path: str
) -> dict[str, Any]:
    engine = Engine(model, settings["engine"], seed=settings["seed"])
    nothink_id = engine.token_id(NOTHINK)
    jobs, rejects = [], []
    for row in problems:
        problem = row.get("problem")
        if defect := text_defect(problem):
            rejects.append({"stage": "select", "id": row.get("id"), "field": "problem", "reason": defect})
            continue
        prompt = engine.chat_prompt([{"role": "user", "content": problem}])
        if not engine.fits(prompt, 1):
            rejects.append(
                {
                    "stage": "select",
                    "id": row["id"],
                    "field": "problem",
                    "reason": f"prompt of {len(prompt)} tokens exceeds max_model_len {engine.max_model_len}",
                }
            )
            continue
        jobs.append(ShardJob(key=row["id"], prompt=prompt, payload={"id": row["id"]}))
    sampling = {"temperature": 0.0, "max_tokens": 1, "logprobs": settings["select"]["logprobs"]}
    threshold = settings["select"].get("threshold")
    rows = run_shard(
        engine,
        jobs,
        sampling,
        lambda j, c: score_row(j, c, nothink_id, threshold),
        output,
        base_seed=settings["seed"],
        batch_size=settings["engine"]["batch_size"],
        identity={"threshold": threshold},  # decides the rows' `difficult`
    )
    for r in rows:
        r.pop("key", None)
    write_rows(rows, output, SCORE_SCHEMA)
    write_rejects(rejects, rejects_path)
    ShardCheckpoint(output).discard()
    counts = {
        "in": len(problems),
        "scored": len(rows),
        "quarantined": len(rejects),
        "difficult": sum(r["difficult"] for r in rows),
    }
    log.info("select: %s", counts)
    return counts


def random_subset(path: str, seed: int) -> int:
    """Relabel the scores file at ``path``: as many difficult problems as the selector found, drawn at
    random (seeded) instead — the control for the selection-method ablation. Returns that number."""
    table = pq.read_table(path)
    n = pc.sum(table["difficult"]).as_py() or 0
    ids = table["id"].to_pylist()
    chosen = set(sorted(ids, key=lambda i: seeded_rank(seed, i))[:n])
    flags = pa.array([i in chosen for i in ids], type=table.schema.field("difficult").type)
    table = table.set_column(table.schema.get_field_index("difficult"), "difficult", flags)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    log.info(
        "select: %d of %d problems marked difficult at random (seed %d), as many as the selector found",
        n,
        len(ids),
        seed,
    )
    return n


def summarize(flags: pa.ChunkedArray, rejects: list[dict[str, Any]], threshold: float | None) -> dict[str, Any]:
    """Counts from the scores' ``difficult`` column (``flags``) and the quarantined rows."""
    n = len(flags)
    difficult = pc.sum(flags).as_py() or 0
    return {
        "scored": n,
        "difficult": difficult,
        "simple": n - difficult,
        "difficult_ratio": difficult / n if n else None,
        "quarantined": len(rejects),
        "quarantined_by_reason": dict(Counter(str(r["reason"]).split(" of ")[0] for r in rejects)),
        "rule": "argmax (simple iff greedy first token is </think>)"
        if threshold is None
        else f"p_nothink < {threshold}",
        "reference_difficult_ratio": 0.34,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Score problems as simple/difficult with the selector.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="score one shard of a problem table")
    s.add_argument("--problems", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--shard", required=True, help="Snakemake scatteritem, e.g. 1-of-4")
    s.add_argument("--output", required=True)
    s.add_argument("--rejects", required=True)
    cli.add_settings_argument(s)
    g = cli.add_gather_parser(sub, help="join shard scores, summarize and plot")
    g.add_argument("--plot", required=True)
    g.add_argument(
        "--random-subset",
        action="store_true",
        help="mark as many problems difficult as the selector did, at random (select.random_subset)",
    )
    cli.add_settings_argument(g)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    if args.cmd == "shard":
        shard, n_shards = parse_scatteritem(args.shard)
        problems = read_shard(args.problems, shard, n_shards, columns=["id", "problem"])
        run(problems, args.model, settings, args.output, args.rejects)
    else:
        from scalediff.plots import histogram

        # Streamed shard by shard; the summary and plot need two small columns of the result only.
        concat_parquet(args.shards, args.output, SCORE_SCHEMA)
        if args.random_subset:
            random_subset(args.output, int(settings.get("seed", 0)))
        scores = pq.read_table(args.output, columns=["difficult", "p_nothink"])
        rejects = read_many(args.shard_rejects)
        threshold = settings["select"].get("threshold")
        write_rejects(rejects, args.rejects)
        summary = summarize(scores["difficult"], rejects, threshold)
        if args.random_subset:
            summary["rule"] = f"random subset (seeded) of the size {summary['rule']} gives"
        write_json(summary, args.summary)
        histogram(
            scores["p_nothink"].to_numpy(),
            args.plot,
            title=f"P(first token = </think>), {summary['scored']} problems, {summary['difficult']} difficult",
            xlabel="p_nothink",
            marker=0.5 if threshold is None else threshold,
            marker_label="argmax boundary (approx.)" if threshold is None else "threshold",
        )
        log.info("select gather: %s", summary)


if __name__ == "__main__":
    main()
