"""End to end: the embedded default runs every stage on CPU, and the funnel is consistent."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_config import _workdir

R = "results"


def rows(workdir: Path, path: str) -> list[dict]:
    return pq.read_table(workdir / R / path).to_pylist()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    workdir = _workdir(tmp_path_factory.mktemp("demo"), "config.yaml")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"], cwd=workdir, capture_output=True, text=True, timeout=3600
    )
    assert res.returncode == 0, res.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_ids_and_counts_are_consistent_through_the_funnel(demo):
    pool = rows(demo, "ingest/pool.parquet")
    pool_ids = {r["id"] for r in pool}
    assert len(pool) == len(pool_ids) == 240

    scores = rows(demo, "select/difficulty.parquet")
    select_rejects = rows(demo, "select/rejects.parquet")
    assert len(scores) + len(select_rejects) == len(pool)
    assert {r["id"] for r in scores} <= pool_ids
    n_difficult = sum(r["difficult"] for r in scores)
    assert 0 < n_difficult < len(scores), "the shaped selector separates easy from hard problems"
    diffgen_train = json.loads((demo / R / "diffgen/train_summary.json").read_text())
    assert diffgen_train["difficult_problems"] == sum(r["difficult"] for r in scores if r["id"] in pool_ids)

    generated = rows(demo, "diffgen/generated.parquet")
    gen_summary = json.loads((demo / R / "diffgen/summary.json").read_text())
    assert gen_summary["sampled"] == 240
    assert len(generated) == gen_summary["kept"] > 0
    assert all(r["origin"] == "generated" and r["id"].startswith("g-") for r in generated)

    solutions = rows(demo, "distill/solutions.parquet")
    gen_ids = {r["id"] for r in generated}
    assert {r["id"] for r in solutions} <= gen_ids | pool_ids
    assert gen_ids <= {r["id"] for r in solutions} | {r["id"] for r in rows(demo, "distill/rejects.parquet")}

    final_gen = rows(demo, "filter/dataset/generated.parquet")
    final_orig = rows(demo, "filter/dataset/original.parquet")
    assert len(final_gen) > 0, "some generated problems survive the filters into SFT"
    assert {r["id"] for r in final_gen} <= gen_ids
    assert {r["id"] for r in final_orig} <= pool_ids
    assert all(r["solution"] for r in final_gen + final_orig)

    sft = json.loads((demo / R / "sft/scalediff/summary.json").read_text())
    assert sft["rows"] == len(final_gen) + len(final_orig)
    assert sft["last_loss"] < sft["first_loss"]
    baseline = json.loads((demo / R / "sft/original/summary.json").read_text())
    assert baseline["rows"] == len(final_orig), "the baseline student sees the original data only"


@pytest.mark.slow
def test_report_has_every_benchmark_and_the_papers_rows(demo):
    table = (demo / R / "report/paper_table.md").read_text()
    for col in ("AIME24", "AIME25", "HMMT-Feb25", "BRUMO25", "MATH500", "AVG (paper's weighted)", "mean (plain)"):
        assert col in table
    for model in (
        "ScaleDiff-7B",
        "AM-Qwen3-Distilled-7B (original data only)",
        "scalediff_student",
        "original_only",
        "student_base",
    ):
        assert model in table
    for png in ("difficulty.png", "loss_curves.png", "scores.png"):
        assert (demo / R / "report" / png).stat().st_size > 1000


@pytest.mark.slow
def test_forcerun_one_stage_replans_only_it_and_its_dependents(demo):
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--forcerun", "sft_train"],
        cwd=demo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    planned = res.stdout.split("Job stats:")[1].split("Reasons:")[0]
    assert "sft_train" in planned and "report" in planned
    assert "eval_benchmark" in planned
    for upstream in ("ingest", "select_shard", "diffgen_train", "distill_shard", "tiny_model"):
        assert upstream not in planned


@pytest.mark.slow
def test_experiments_rerun_only_what_each_variant_changes(demo):
    """`snakemake experiments` after the main run: the SFT-data variant trains and evaluates one
    student and computes nothing upstream; the main run's outputs are read, never rewritten."""
    main_outputs = [
        demo / R / p for p in ("sft/scalediff/summary.json", "diffgen/generated.parquet", "filter/funnel.json")
    ]
    before = [p.stat().st_mtime_ns for p in main_outputs]
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "experiments"],
        cwd=demo,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    assert [p.stat().st_mtime_ns for p in main_outputs] == before
    ran = res.stderr.split("Job stats:")[1].split("\n\n")[0]
    for upstream in ("ingest", "select_shard", "diffgen_train", "tiny_model"):
        assert upstream not in ran  # shared by every variant: read from the main run
    half = demo / R / "experiments/generated_half"
    assert sorted(p.name for p in half.iterdir()) == ["benchmarks", "eval", "logs", "run_summary.json", "sft"]
    assert sorted(p.name for p in (half / "sft").iterdir()) == ["scalediff"]  # not the original-only baseline
    original = len(rows(demo, "filter/dataset/original.parquet"))
    generated = len(rows(demo, "filter/dataset/generated.parquet"))
    mix = json.loads((half / "sft/scalediff/summary.json").read_text())["by_origin"]
    assert mix == {"original": original, "generated": min(round(0.5 * original), generated)}
    temperature = demo / R / "experiments/diffgen_temperature_1"
    assert (temperature / "diffgen/generated.parquet").exists() and not (temperature / "diffgen/model").exists()

    summary = json.loads((demo / R / "experiments/summary.json").read_text())
    assert set(summary["groups"]) == {"augmentation_size", "diffgen_temperature"}
    for rows_ in summary["groups"].values():
        for row in rows_:
            gain = row["gain"]
            assert gain["ci_low"] <= gain["gain"] <= gain["ci_high"]
    table = (demo / R / "experiments/experiments.md").read_text()
    assert (
        "tiny demo model" in table and "generated_half" in table and "math_500 (100 of 500 problems, 1 seed)" in table
    )
