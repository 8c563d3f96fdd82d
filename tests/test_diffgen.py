"""diffgen gather through its CLI: shards joined in order, duplicates dropped to the rejects."""

import json

import pyarrow.parquet as pq

from scalediff import diffgen
from scalediff.records import PROBLEM_SCHEMA, REJECT_SCHEMA, problem_id, write_rows


def _problem(text: str, source: str) -> dict:
    pid = problem_id(text, "g")
    return {"id": pid, "problem": text, "solution": None, "answer": None, "origin": "generated", "source": source}


def test_gather_keeps_first_occurrences_and_rejects_duplicates(tmp_path):
    a, b, c = "Find x if 2x = 4.", "Compute 3 + 5.", "What is 7 * 6?"
    shards = [
        [_problem(a, "s0"), _problem(b, "s0"), _problem(a, "s0")],  # duplicate within a shard
        [_problem(b + "  ", "s1"), _problem(c, "s1")],  # duplicate across shards (same normalised text)
    ]
    paths, reject_paths = [], []
    for i, rows in enumerate(shards):
        paths.append(str(tmp_path / f"{i}.parquet"))
        reject_paths.append(str(tmp_path / f"{i}.rejects.parquet"))
        write_rows(rows, paths[-1], PROBLEM_SCHEMA)
        length = [{"stage": "diffgen", "id": None, "field": "problem", "reason": "length", "raw": "…"}] * i
        write_rows(length, reject_paths[-1], REJECT_SCHEMA)
    out, rejects, summary = (str(tmp_path / n) for n in ("out.parquet", "rejects.parquet", "summary.json"))

    diffgen.main(
        ["gather", "--shards", *paths, "--shard-rejects", *reject_paths]
        + ["--output", out, "--rejects", rejects, "--summary", summary]
    )

    kept = pq.read_table(out).to_pylist()
    assert [r["problem"] for r in kept] == [a, b, c]
    assert [r["source"] for r in kept] == ["s0", "s0", "s1"]
    dropped = [r for r in pq.read_table(rejects).to_pylist() if r["reason"] == "duplicate"]
    assert [(r["id"], r["raw"]) for r in dropped] == [(problem_id(a, "g"), "s0"), (problem_id(b, "g"), "s1")]
    assert json.loads(open(summary).read()) == {
        "sampled": 6,  # 5 generated rows + 1 that hit the length limit
        "kept": 3,
        "dropped": {"length": 1, "duplicate": 2},
    }
