"""bench/paper_scale.py keeps working: every CPU step runs through its entry point on a tiny paper-shaped
input and lands in the table beside its profile request."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import paper_scale  # noqa: E402

STEPS = {
    "ingest": "ingest",
    "select gather (pool)": "select_gather",
    "diffgen gather": "diffgen_gather",
    "select gather (generated)": "select_generated_gather",
    "distill gather": "distill_gather",
    "filter rules": "filter_rules",
    "filter gather": "filter_gather",
    "sft data": "sft_data",
    "report": "report",
}


def test_solutions_are_capped_by_the_free_disk():
    roomy = paper_scale.counts(0.001, 12_000, free_bytes=10**13)
    assert roomy["solutions"] == roomy["solutions_wanted"] == 1_900
    full = paper_scale.counts(1.0, 12_000, free_bytes=100 * 10**9)
    assert full["pool"] == 558_129 and full["generated"] == 2_000_000
    assert 0 < full["solutions"] < full["solutions_wanted"] == 1_900_000


@pytest.mark.slow
def test_paper_scale_bench_runs_every_step(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "paper_scale.py"),
            *("--scale", "0.00005", "--solution-tokens", "400", "--workers", "2", "--workdir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    requested, default = paper_scale.requests()
    for label, rule in STEPS.items():
        line = re.search(
            rf"^{re.escape(label)}\s+{rule}\s+([\d,]+)\s+([\d.]+)\s.*\|\s+([\d,]+)\s+([\d,]+) (yes|NO)$",
            out.stdout,
            re.M,
        )
        assert line, (label, out.stdout)
        assert int(line.group(1).replace(",", "")) > 0 and float(line.group(2)) > 0
        assert (int(line.group(3).replace(",", "")), int(line.group(4).replace(",", ""))) == requested.get(
            rule, default
        )
    assert "filter rules: CPU/row" not in out.stdout  # one scale: no marginal cost to split
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"], "inputs and outputs are removed unless --keep"
