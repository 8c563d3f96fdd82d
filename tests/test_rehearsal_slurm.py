"""The dress rehearsal through the SLURM profile on the real scheduler: `config/rehearsal.yaml`
(the paper configuration on twins) for the stages whose paper settings fail first on a cluster.

- select: the AdaptThink twin (R1-Distill template, BOS, 131,072 positions) on the GPU partition,
  two shards gathered on the CPU partition;
- eval of the student base: the Qwen2.5-Math twin has 4,096 positions, and the paper configuration
  must give it a context vLLM accepts (it refused 32,768 before `engine.models`), with its default
  system prompt rendered by its own template.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from test_config import _workdir
from test_slurm import pytestmark, run_snakemake_slurm, slurm_jobs  # noqa: F401  (marks: slurm, skip)

R = "results/rehearsal"
TARGETS = [f"{R}/select/difficulty.parquet", f"{R}/eval/student_base/aime24.json"]


def test_rehearsal_select_and_student_base_eval_on_slurm(tmp_path):
    workdir = _workdir(tmp_path, "rehearsal.yaml")
    run_snakemake_slurm(workdir, TARGETS, ["--configfile=config/rehearsal.yaml"], timeout=3600)

    jobs = slurm_jobs(workdir)
    assert len(jobs["select_shard"]) == 2
    for rule in ("select_shard", "eval_benchmark"):
        for job in jobs[rule]:
            assert job.sacct["job"]["Partition"] == "gpu", (rule, job.sacct)
    scores = pq.read_table(workdir / f"{R}/select/difficulty.parquet").to_pylist()
    assert scores and all(0.0 <= r["p_nothink"] <= 1.0 for r in scores)

    # The student base's engine ran at its own 4,096 positions (the paper's engine.models entry).
    log = (workdir / f"{R}/logs/eval/student_base/aime24.log").read_text()
    assert "User-specified max_model_len" not in log
    result = json.loads((workdir / f"{R}/eval/student_base/aime24.json").read_text())
    assert result["n_problems"] == 4 and len(result["seeds"]) == 1  # the rehearsal's counts
    details = pq.read_table(workdir / f"{R}/eval/student_base/aime24.details.parquet").to_pylist()
    # Qwen2.5-Math-Instruct's template inserts its default system prompt when none is given.
    assert all("Please reason step by step" in d["prompt"].split("<|im_start|>user")[0] for d in details)
    twin = json.loads((workdir / f"{R}/models/twins/Qwen__Qwen2.5-Math-7B-Instruct/twin.json").read_text())
    assert twin["real_config"]["max_position_embeddings"] == 4096
