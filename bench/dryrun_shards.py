"""Benchmark: how long Snakemake takes to plan the paper DAG through the SLURM profiles.

Prints the dry-run wall time at 256 and 1,024 shards per sharded stage (not a test):
    .venv/bin/python bench/dryrun_shards.py [--shards 256 1024]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def plan(shards: int, workdir: Path) -> tuple[float, int]:
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg["select"]["shards"] = shards
    cfg["diffgen"]["sample"]["shards"] = shards
    cfg["distill"]["shards"] = shards
    cfg["filter"]["model_based"]["shards"] = shards
    path = workdir / f"paper_{shards}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--quiet",
        "all",
        "--configfile",
        str(path),
        "--profile",
        str(REPO / "profiles" / "slurm-cluster"),
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--directory",
        str(workdir),
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    total = next((int(line.split()[-1]) for line in res.stdout.splitlines() if line.startswith("total")), -1)
    return elapsed, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, nargs="+", default=[256, 1024])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config",):
            shutil.copytree(REPO / name, Path(tmp) / name)
        for n in args.shards:
            elapsed, jobs = plan(n, Path(tmp))
            print(f"dry-run with {n:>5} shards per stage: {jobs:>6} jobs planned in {elapsed:6.1f} s")


if __name__ == "__main__":
    main()
