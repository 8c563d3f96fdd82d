"""The selector through the real vLLM engine, with tiny models whose first token is known."""

import json
import subprocess
import sys

import pytest
from conftest import ENGINE

from scalediff.records import PROBLEM_SCHEMA, parse_scatteritem, problem_id, read_rows, write_rows
from scalediff.select import is_difficult

PROBLEMS = ["What is 2+3?", "Find all primes p such that p^2+2 is prime.", "Compute 7*8.", ""]


def test_scatteritem_parsing():
    assert parse_scatteritem("1-of-1") == (0, 1)
    assert parse_scatteritem("3-of-8") == (2, 8)


def test_difficulty_rule():
    assert is_difficult(0.9, True, None) is False
    assert is_difficult(0.9, False, None) is True  # argmax rule looks at the greedy token only
    assert is_difficult(0.3, True, 0.5) is True
    assert is_difficult(0.6, False, 0.5) is False


def _run_select(model, tmp_path, threshold=None):
    rows = [
        {
            "id": problem_id(p or "empty"),
            "problem": p,
            "solution": None,
            "answer": None,
            "origin": "original",
            "source": "t",
        }
        for p in PROBLEMS
    ]
    write_rows(rows, tmp_path / "problems.parquet", PROBLEM_SCHEMA)
    settings = {"seed": 0, "engine": ENGINE, "select": {"logprobs": 5, "threshold": threshold}}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scalediff.select",
            "shard",
            "--problems",
            str(tmp_path / "problems.parquet"),
            "--model",
            str(model),
            "--shard",
            "1-of-1",
            "--output",
            str(tmp_path / "scores.parquet"),
            "--rejects",
            str(tmp_path / "rejects.parquet"),
            "--settings",
            json.dumps(settings),
        ],
        check=True,
        cwd=tmp_path,
    )
    return read_rows(tmp_path / "scores.parquet"), read_rows(tmp_path / "rejects.parquet")


@pytest.mark.slow
def test_always_nothink_selector_calls_everything_simple(always_nothink, tmp_path):
    scores, rejects = _run_select(always_nothink, tmp_path)
    assert len(scores) == 3 and [r["reason"] for r in rejects] == ["empty problem"]
    assert all(not r["difficult"] for r in scores)
    assert all(r["first_token"] == "</think>" for r in scores)
    assert all(r["p_nothink"] > 0.5 for r in scores)


@pytest.mark.slow
def test_never_nothink_selector_calls_everything_difficult(never_nothink, tmp_path):
    scores, _ = _run_select(never_nothink, tmp_path)
    assert len(scores) == 3
    assert all(r["difficult"] for r in scores)
    assert all(r["p_nothink"] < 0.5 for r in scores)
    # A threshold above every p_nothink keeps them difficult; one below flips them to simple.
    low, _ = _run_select(never_nothink, tmp_path, threshold=0.0)
    assert not any(r["difficult"] for r in low)


def test_gather_streams_shards_into_scores_summary_and_plot(tmp_path):
    """The gather through its CLI: shard score files joined in order, summary from the columns."""
    from scalediff import select
    from scalediff.records import REJECT_SCHEMA

    def score(i, difficult):
        return {"id": f"p-{i}", "difficult": difficult, "p_nothink": 0.1 if difficult else 0.9, "first_token": "x"}

    shards = [[score(i, i % 3 == 0) for i in range(k * 1500, (k + 1) * 1500)] for k in range(2)]
    paths, reject_paths = [], []
    for k, rows in enumerate(shards):
        paths.append(str(tmp_path / f"{k}.parquet"))
        reject_paths.append(str(tmp_path / f"{k}.rejects.parquet"))
        write_rows([{**r, "top_tokens": "{}"} for r in rows], paths[-1], select.SCORE_SCHEMA)
        bad = [{"stage": "select", "id": f"q-{k}", "field": "problem", "reason": "empty problem"}]
        write_rows(bad, reject_paths[-1], REJECT_SCHEMA)
    out = {n: str(tmp_path / n) for n in ("scores.parquet", "rejects.parquet", "summary.json", "p.png")}
    select.main(
        ["gather", "--shards", *paths, "--shard-rejects", *reject_paths, "--output", out["scores.parquet"]]
        + ["--rejects", out["rejects.parquet"], "--summary", out["summary.json"], "--plot", out["p.png"]]
        + ["--settings", json.dumps({"select": {"threshold": None}})]
    )
    assert [r["id"] for r in read_rows(out["scores.parquet"])] == [f"p-{i}" for i in range(3000)]
    assert [r["id"] for r in read_rows(out["rejects.parquet"])] == ["q-0", "q-1"]
    summary = json.loads(open(out["summary.json"]).read())
    assert (summary["scored"], summary["difficult"], summary["simple"], summary["quarantined"]) == (3000, 1000, 2000, 2)
    assert summary["difficult_ratio"] == 1000 / 3000
    assert open(out["p.png"], "rb").read(4) == b"\x89PNG"
