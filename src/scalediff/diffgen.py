"""diffgen: train the difficult-problem generator (QFT) and sample new problems from it.

Training data is the difficult problems only, no solutions: each example is
``<|im_start|>user\\n{problem}<|im_end|>\\n`` with the loss on ``{problem}<|im_end|>\\n``.
Sampling starts from the bare prefix ``<|im_start|>user\\n`` and stops at ``<|im_end|>``; each
shard has its own seed. Outputs that hit the length limit or are empty are dropped and counted;
exact duplicates within and across shards are collapsed at gather time.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from scalediff import cli
from scalediff.engine import Completion, Engine, ShardJob, run_shard
from scalediff.records import (
    PROBLEM_SCHEMA,
    ShardCheckpoint,
    concat_parquet,
    iter_rows,
    parse_scatteritem,
    problem_id,
    read_many,
    shard_slice,
    write_json,
    write_rejects,
    write_rows,
)

log = logging.getLogger(__name__)

QFT_PREFIX = "<|im_start|>user\n"
QFT_SUFFIX = "<|im_end|>\n"


def qft_examples(problems: Iterable[dict[str, Any]], difficulty: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """The QFT set (SPEC §2): difficult problems only, loss on ``{problem}<|im_end|>\\n``.

    Both inputs are consumed once, ``difficulty`` first, so they can be streamed."""
    difficult = {r["id"] for r in difficulty if r["difficult"]}
    return [{"prompt": QFT_PREFIX, "response": p["problem"] + QFT_SUFFIX} for p in problems if p["id"] in difficult]


def train_generator(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    from scalediff.train import is_main_process, train

    # Every rank builds the set: stream the two columns each needs, never the pool's solutions.
    problems = iter_rows(args.problems, columns=["id", "problem"])
    examples = qft_examples(problems, iter_rows(args.difficulty, columns=["id", "difficult"]))
    log.info("diffgen train: %d difficult problems", len(examples))
    stats = train(args.base_model, examples, args.output, settings["diffgen"]["train"], loss_csv=args.loss_csv)
    if is_main_process():
        write_json({"difficult_problems": len(examples), **stats}, args.summary)


def generated_row(job: ShardJob, comps: list[Completion]) -> list[dict[str, Any]]:
    comp = comps[0]
    return [
        {
            "text": comp.text,
            "finish_reason": comp.finish_reason,
            "completion_tokens": comp.completion_tokens,
            "source": job.payload["source"],
        }
    ]


def sample_shard(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    shard, n_shards = parse_scatteritem(args.shard)
    cfg = settings["diffgen"]["sample"]
    seed = settings["seed"] + shard  # seed per shard, as in the reference (seed = shard id)
    engine = Engine(args.model, settings["engine"], seed=seed)
    prompt = engine.encode(cfg["prompt"])
    indices = range(cfg["n_problems"])[shard_slice(cfg["n_problems"], shard, n_shards)]
    jobs = [
        ShardJob(key=f"{shard}-{i}", prompt=prompt, payload={"source": f"diffgen/shard{shard}/seed{seed}/{i}"})
        for i in indices
    ]
    sampling = {k: cfg[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "stop") if k in cfg}
    raw = run_shard(
        engine, jobs, sampling, generated_row, args.output, base_seed=seed, batch_size=settings["engine"]["batch_size"]
    )
    kept, rejects = [], []
    for r in raw:
        text = r["text"].replace(QFT_SUFFIX.strip(), "").strip()
        if r["finish_reason"] == "length":
            rejects.append(
                {"stage": "diffgen", "id": r["key"], "field": "problem", "reason": "length", "raw": text[:2000]}
            )
        elif not text:
            rejects.append({"stage": "diffgen", "id": r["key"], "field": "problem", "reason": "empty", "raw": ""})
        else:
            kept.append(
                {
                    "id": problem_id(text, "g"),
                    "problem": text,
                    "solution": None,
                    "answer": None,
                    "origin": "generated",
                    "source": r["source"],
                }
            )
    write_rows(kept, args.output, PROBLEM_SCHEMA)
    write_rejects(rejects, args.rejects)
    ShardCheckpoint(args.output).discard()
    log.info(
        "diffgen shard %s: %d sampled, %d kept, dropped %s",
        args.shard,
        len(raw),
        len(kept),
        dict(Counter(r["reason"] for r in rejects)),
    )


def gather(args: argparse.Namespace) -> None:
    """Shards into one file, exact duplicates (same id = same normalised text) after the first dropped.

    Streams batch by batch: memory holds the ids seen (~2M at paper scale), never the problems.
    """
    rejects = read_many(args.shard_rejects)
    seen: set[str] = set()

    def first_occurrences(batch: pa.RecordBatch) -> list[int]:
        keep = []
        for i, (pid, source) in enumerate(zip(batch["id"].to_pylist(), batch["source"].to_pylist(), strict=True)):
            if pid in seen:
                dup = {"stage": "diffgen", "id": pid, "field": "problem", "reason": "duplicate", "raw": source}
                rejects.append(dup)
            else:
                seen.add(pid)
                keep.append(i)
        return keep

    n_rows = concat_parquet(args.shards, args.output, PROBLEM_SCHEMA, keep=first_occurrences)
    write_rejects(rejects, args.rejects)
    reasons = Counter(r["reason"] for r in rejects)
    summary = {
        "sampled": n_rows + reasons["length"] + reasons["empty"],
        "kept": len(seen),
        "dropped": dict(reasons),
    }
    write_json(summary, args.summary)
    log.info("diffgen gather: %s", summary)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the problem generator and sample problems.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--problems", required=True)
    t.add_argument("--difficulty", required=True)
    t.add_argument("--base-model", required=True)
    t.add_argument("--output", required=True)
    t.add_argument("--loss-csv", required=True)
    t.add_argument("--summary", required=True)
    cli.add_settings_argument(t)
    s = sub.add_parser("sample")
    s.add_argument("--model", required=True)
    s.add_argument("--shard", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--rejects", required=True)
    cli.add_settings_argument(s)
    cli.add_gather_parser(sub)
    args = ap.parse_args(argv)
    cli.setup_logging()
    if args.cmd == "train":
        train_generator(args, cli.load_settings(args))
    elif args.cmd == "sample":
        sample_shard(args, cli.load_settings(args))
    else:
        gather(args)


if __name__ == "__main__":
    main()
