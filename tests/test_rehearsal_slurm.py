"""The dress rehearsal end to end through the SLURM profile on the real scheduler.

`config/rehearsal.yaml` is the paper configuration on twins (the real models' contexts, templates,
special tokens, thinking switches, token budgets, cutoffs, packing, DeepSpeed ZeRO-2, bf16, the eval
protocol); only counts and the device differ (``scalediff.rehearsal``). The whole DAG runs as a user
runs the paper: ``snakemake --profile ... --configfile config/rehearsal.yaml``, every GPU rule on the
`gpu` partition, the preflight plan before any of them, the report at the end. Failures this path
found that the embedded default never could: the student base refused at 32,768 positions, a
one-process DeepSpeed run dying on MPI discovery, the teacher's 40,960 context above the engine's
token budget.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from test_config import _workdir
from test_slurm import pytestmark, run_snakemake_slurm, slurm_jobs  # noqa: F401  (marks: slurm, skip)

R = "results/rehearsal"
GPU_RULES = {
    "select_shard",
    "select_generated_shard",
    "diffgen_train",
    "diffgen_sample",
    "distill_shard",
    "filter_model_shard",
    "sft_train",
    "eval_benchmark",
}
BENCHMARKS = ("aime24", "aime25", "hmmt_feb_2025", "brumo_2025", "math_500")


def test_rehearsal_end_to_end_on_slurm(tmp_path):
    workdir = _workdir(tmp_path, "rehearsal.yaml")
    run_snakemake_slurm(workdir, [], ["--configfile=config/rehearsal.yaml"], timeout=5400)
    check_rehearsal(workdir)


def check_rehearsal(workdir: Path) -> None:
    """What the finished rehearsal in ``workdir`` must show."""
    cfg = yaml.safe_load((workdir / "config" / "rehearsal.yaml").read_text())
    jobs = slurm_jobs(workdir)

    # Every stage ran as a SLURM job, GPU rules on the GPU partition, after the preflight plan (a local
    # rule: it runs on the submitting host before anything is submitted).
    assert GPU_RULES <= set(jobs), sorted(jobs)
    assert "preflight" not in jobs
    assert len(jobs["select_shard"]) == cfg["select"]["shards"]
    assert len(jobs["distill_shard"]) == cfg["distill"]["shards"]
    assert len(jobs["eval_benchmark"]) == len(cfg["eval"]["models"]) * len(BENCHMARKS)
    plan_end = datetime.fromtimestamp(int((workdir / f"{R}/plan/plan.json").stat().st_mtime))
    for rule in GPU_RULES:
        for job in jobs[rule]:
            assert job.sacct["job"]["Partition"] == "gpu", (rule, job.sacct)
            assert job.sacct["job"]["State"] == "COMPLETED", (rule, job.sacct)
            assert datetime.fromisoformat(job.sacct["job"]["Start"]) >= plan_end, (rule, job.sacct, plan_end)
    plan_rules = json.loads((workdir / f"{R}/plan/plan.json").read_text())["rules"]
    assert {name.split("[")[0] for name in plan_rules} == GPU_RULES, sorted(plan_rules)

    # Each engine ran at its own model's context (vLLM's own log line): the teacher at 40,960 (32,768
    # new tokens after the prompt), the student base at its 4,096, the selector at the paper's 32,768.
    for log, context in (
        ("distill/shard_1-of-2.log", 40960),
        ("filter/model_1-of-2.log", 4096),
        ("select/shard_1-of-2.log", 32768),
        ("eval/student_base/aime24.log", 4096),
        ("eval/scalediff_student/aime24.log", 32768),
    ):
        assert f"Using max model len {context}" in (workdir / f"{R}/logs/{log}").read_text(), log

    # The teacher thought (Qwen3 thinking mode) and the filters kept some of its solutions.
    solutions = pq.read_table(workdir / f"{R}/distill/solutions.parquet", columns=["completion"]).to_pylist()
    assert solutions and sum("</think>" in r["completion"] for r in solutions) > len(solutions) / 2
    funnel = json.loads((workdir / f"{R}/filter/funnel.json").read_text())
    assert funnel["by_origin"]["generated"]["kept"] > 0

    # Both SFT runs trained through DeepSpeed ZeRO-2 at the paper's 32,768 cutoff with packing, on the
    # rope-extended base (the reference's Qwen2.5-Math-7B-Instruct-RoPE-300k settings), losses logged.
    for variant in ("original", "scalediff"):
        summary = json.loads((workdir / f"{R}/sft/{variant}/summary.json").read_text())
        assert summary["steps"] >= 1 and summary["packed_rows"] >= 1, summary
        with open(workdir / f"{R}/sft/{variant}/loss.csv") as fh:
            assert len(list(csv.DictReader(fh))) == summary["steps"]
        model_cfg = json.loads((workdir / f"{R}/sft/{variant}/model/config.json").read_text())
        assert (model_cfg["rope_theta"], model_cfg["max_position_embeddings"]) == (300000, 32768), model_cfg
        log = (workdir / f"{R}/logs/sft/{variant}.log").read_text()
        assert "rendezvous on 127.0.0.1" in log and "DeepSpeed" in log

    # The student base's default system prompt, rendered by its own template.
    details = pq.read_table(workdir / f"{R}/eval/student_base/aime24.details.parquet").to_pylist()
    assert all("Please reason step by step" in d["prompt"].split("<|im_start|>user")[0] for d in details)
    twin = json.loads((workdir / f"{R}/models/twins/Qwen__Qwen2.5-Math-7B-Instruct/twin.json").read_text())
    assert twin["real_config"]["max_position_embeddings"] == 4096

    # The report: every model scored on every benchmark, beside the paper's rows.
    table = (workdir / f"{R}/report/paper_table.md").read_text()
    for model in cfg["eval"]["models"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} "))
        assert row.count("|") >= len(BENCHMARKS) + 4, row
    for bench in BENCHMARKS:
        result = json.loads((workdir / f"{R}/eval/scalediff_student/{bench}.json").read_text())
        assert result["n_problems"] == cfg["benchmarks"][bench]["limit"] and len(result["seeds"]) == 1
