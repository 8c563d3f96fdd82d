"""bench/filter_scale.py keeps working: a tiny run of every component prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~25 s: the bench as a subprocess (seen in the run's --durations list)
def test_filter_scale_bench_runs_every_component(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "filter_scale.py"),
            *("--rows", "300", "600", "--solution-tokens", "400", "--shard-rows", "200"),
            *("--components", "text", "answers", "dedup", "decontam", "stage", "--workdir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    assert "failed" not in out, out
    for rows in ("300", "600"):
        section = out.split(f"== {rows} rows")[1].split("==")[0]
        for name in ("text", "answers", "dedup", "decontam", "stage"):
            line = re.search(rf"^{name}\s+([\d,]+)\s", section, re.M)
            assert line and int(line.group(1).replace(",", "")) > 0, (name, section)
    # the synthetic data plants rejects (truncations, loops, duplicates, benchmark problems): they are found
    text_flagged = int(re.search(r"^text\s.*\s([\d,]+)$", out.split("== 600 rows")[1], re.M).group(1))
    assert 0 < text_flagged < 600
    assert "peak RSS at 600 rows / at 300 rows" in out
    assert not any(tmp_path.iterdir()), "shards are removed unless --keep"
