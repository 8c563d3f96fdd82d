"""Multi-node training launch as the SLURM profile submits it (dry run of the paper configuration).

Two nodes cannot be exercised on the single-host test scheduler: Debian's slurm-wlm is built
without --enable-multiple-slurmd, so one host runs one slurmd. What a 2-node job gets is checked
here from the job's resources (what the slurm plugin turns into sbatch flags) and its command.
"""

from __future__ import annotations

import re

from test_config import _dry_run, _workdir

TARGET = "results/sft/scalediff/summary.json"


def _sft_job(stdout: str) -> tuple[dict[str, str], str]:
    block = stdout[stdout.index("rule sft_train:") :]
    res = re.search(r"resources: (.*)", block).group(1)
    resources = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", res))
    command = re.search(r"^Shell command: (.*)$|^\s*(srun .*)$", block, re.M)
    return resources, (command.group(1) or command.group(2))


def test_two_node_sft_is_one_srun_step_with_one_torchrun_per_exclusive_node(tmp_path):
    def edit(cfg: dict) -> None:
        cfg["sft"]["launch"]["gpu_type"] = "h100"

    res = _dry_run(_workdir(tmp_path, "paper.yaml", edit), TARGET, "-p", "--configfile", "config/paper.yaml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resources, command = _sft_job(res.stdout)
    # the plugin's MPI path: its job-step plugin does not wrap the command in a second `srun -n1`
    assert resources["mpi"] == "srun" and resources["tasks"] == "2" and resources["nodes"] == "2"
    # one task per exclusive node; requeued to run the next time-boxed segment (sft.segment_minutes)
    assert resources["slurm_extra"].split() == ["--ntasks-per-node=1", "--exclusive", "--requeue"]
    assert resources["gres"] == "gpu:h100:8" and resources["tasks_per_gpu"] == "0"
    assert command.startswith("srun --kill-on-bad-exit=1 ")
    assert '--ntasks-per-node 1 --cpus-per-task "$SLURM_CPUS_ON_NODE" torchrun --nnodes 2 --nproc-per-node 8' in command
    assert "--overlap" not in command  # no outer step to overlap with


def test_single_node_training_stays_inside_the_plugins_own_step(tmp_path):
    res = _dry_run(_workdir(tmp_path, "paper.yaml"), "results/diffgen/model", "-p", "--configfile", "config/paper.yaml")
    assert res.returncode == 0, res.stdout[-3000:]
    block = res.stdout[res.stdout.index("rule diffgen_train:") :]
    resources = re.search(r"resources: (.*)", block).group(1)
    assert "mpi=" not in resources and "gres=gpu:8" in resources
    assert "torchrun --nnodes 1 --nproc-per-node 8 --standalone -m scalediff.diffgen train" in block
