"""Verification: the teacher's majority answer and agreement per problem, and what filter gather
drops on it (low agreement, minority samples) with the funnel's accounting intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_filter import _disabled, _fixture, _outputs, _run_all

from scalediff.distill import SOLUTION_SCHEMA
from scalediff.records import write_rows
from scalediff.verify import AGREEMENT_SCHEMA, majority


def test_majority_groups_equal_answers_and_counts_missing_ones_against():
    # 1/2, \frac{1}{2} and 0.5 are one answer (math-verify); a missing answer is a vote for nothing
    answer, members = majority([(0, "\\frac{1}{2}"), (1, "3"), (2, "1/2"), (3, None), (4, "0.5")])
    assert answer == "\\frac{1}{2}" and members == [0, 2, 4]
    assert majority([(1, "7"), (0, "8")]) == ("8", [0])  # a tie goes to the lowest sample
    assert majority([(0, None), (1, " ")]) == (None, [])


def _solutions(path: Path, answers: dict[str, list[str | None]]) -> str:
    rows = [
        {
            "id": pid,
            "sample": k,
            "problem": f"problem {pid}",
            "origin": "original" if pid.startswith("p-") else "generated",
            "source": "t",
            "completion": f"\\boxed{{{a}}}" if a else "no answer",
            "finish_reason": "stop",
            "prompt_tokens": 5,
            "completion_tokens": 5,
            "answer": a,
        }
        for pid, samples in answers.items()
        for k, a in enumerate(samples)
    ]
    write_rows(rows, path, SOLUTION_SCHEMA)
    return str(path)


def test_cli_writes_agreement_summary_and_plot(tmp_path):
    solutions = _solutions(
        tmp_path / "s.parquet",
        {"g-a": ["4", "4", "4", "4"], "g-b": ["2", "3", "2", None], "g-c": ["1", "2", "3", "5"], "p-x": ["9", "9"]},
    )
    out = tmp_path / "verify"
    cmd = [sys.executable, "-m", "scalediff.verify", "--solutions", solutions, "--output", str(out / "a.parquet"),
           "--summary", str(out / "s.json"), "--plot", str(out / "a.png"),
           "--settings", json.dumps({"verify": {"min_agreement": 0.5}})]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in pq.read_table(out / "a.parquet").to_pylist()}
    assert pq.read_schema(out / "a.parquet") == AGREEMENT_SCHEMA
    assert rows["g-a"]["agreement"] == 1.0 and rows["g-b"]["agreement"] == 0.5 and rows["g-c"]["agreement"] == 0.25
    assert rows["g-b"]["majority_samples"] == [0, 2] and rows["g-b"]["majority_answer"] == "2"
    summary = json.loads((out / "s.json").read_text())["by_origin"]
    assert summary["generated"]["distribution"] == {"0.250": 1, "0.500": 1, "1.000": 1}
    assert summary["generated"]["below_min_agreement"] == 1 and summary["original"]["unanimous"] == 1
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("cfg", "removed"),
    [
        ({"min_agreement": 0.6, "majority_only": True}, {"low_agreement": 2}),  # both g-good1 samples
        ({"min_agreement": 0.5, "majority_only": True}, {"minority_answer": 1}),  # g-good1's sample 1
        ({"min_agreement": 0.5, "majority_only": False}, {}),
    ],
)
def test_filter_gather_drops_on_agreement_and_accounts_for_every_row(tmp_path, cfg, removed):
    solutions, pool = _fixture(tmp_path)
    # g-good1's two samples disagree (agreement 0.5, sample 0 is the majority); g-good2 is unanimous
    agreement = [
        {"id": "g-good1", "origin": "generated", "samples": 2, "majority_answer": "10", "agreement": 0.5,
         "majority_samples": [0]},
        {"id": "g-good2", "origin": "generated", "samples": 1, "majority_answer": "20", "agreement": 1.0,
         "majority_samples": [0]},
    ]  # fmt: skip
    for pid in ("g-dup", "g-trunc", "g-nobox", "g-multi", "g-contam"):
        agreement.append(
            {"id": pid, "origin": "generated", "samples": 1, "majority_answer": None, "agreement": 0.0,
             "majority_samples": []}
        )  # fmt: skip
    path = tmp_path / "agreement.parquet"
    write_rows(agreement, path, AGREEMENT_SCHEMA)
    import scalediff.filter as flt

    plain = _run_all(tmp_path / "plain", *(_fixture(_mk(tmp_path / "plain"))), _disabled())
    funnel = _run_with_agreement(flt, tmp_path, solutions, pool, str(path), cfg)
    assert funnel["verification"]["removed"] == removed
    kept = funnel["by_origin"]["generated"]["kept"]
    assert kept == plain["by_origin"]["generated"]["kept"] - sum(removed.values())
    rejects = pq.read_table(_outputs(tmp_path)["rejects"]).to_pylist()
    got = {(r["id"], r["sample"]): r["reason"] for r in rejects if r["filter"] == "verification"}
    assert sorted(got.values()) == sorted(r for r, n in removed.items() for _ in range(n))
    assert all(pid == "g-good1" for pid, _ in got)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_with_agreement(flt, tmp: Path, solutions: Path, pool: Path, agreement: str, cfg: dict) -> dict:
    from test_filter import ENGINE, _benchmarks

    filter_cfg = _disabled()
    flt.run_rules(str(solutions), str(pool), _benchmarks(), filter_cfg, str(tmp / "cand.parquet"),
                  str(tmp / "rr.parquet"), str(tmp / "rs.json"))  # fmt: skip
    flt.run_model_shard(str(tmp / "cand.parquet"), "unused", 0, 1, {"filter": filter_cfg, "seed": 0, "engine": ENGINE},
                        str(tmp / "v.parquet"))  # fmt: skip
    return flt.run_gather(str(tmp / "cand.parquet"), str(tmp / "rr.parquet"), str(tmp / "rs.json"),
                          [str(tmp / "v.parquet")], filter_cfg, _outputs(tmp), agreement_path=agreement,
                          verify_cfg=cfg)  # fmt: skip
