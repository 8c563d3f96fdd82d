"""bench/sft_data.py keeps working: a tiny run prints the figures of every phase."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~25 s: the bench as a subprocess (seen in the run's --durations list)
def test_sft_data_bench_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sft_data.py")]
        + ["--rows", "60", "120", "--solution-tokens", "600", "--pack-rows", "5000", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    assert "failed" not in out, out
    lines = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d,]+)\s", out, re.M)
    assert [int(n) for n, _ in lines] == [60, 120], out  # every example with text is counted
    assert all(int(rate.replace(",", "")) > 0 for _, rate in lines)
    assert "peak anonymous memory at 120 rows / at 60 rows" in out
    packed = re.search(r"pack_groups, 5,000 examples .*: [\d.]+ s, ([\d,]+) packed rows", out)
    assert packed and 0 < int(packed.group(1).replace(",", "")) < 5000
    assert not (tmp_path / "w").exists(), "synthetic data is removed unless --keep"
