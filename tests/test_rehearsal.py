"""config/rehearsal.yaml is config/paper.yaml through one documented transform (scalediff.rehearsal)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from scalediff import rehearsal

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
REHEARSAL = REPO / "config" / "rehearsal.yaml"


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, tree


def test_committed_rehearsal_is_the_transform_of_paper_yaml():
    expected = rehearsal.render(str(PAPER), label="config/paper.yaml")
    assert REHEARSAL.read_text() == expected, (
        "config/rehearsal.yaml is stale: python -m scalediff.rehearsal config/paper.yaml > config/rehearsal.yaml"
    )


def test_every_value_outside_the_exceptions_is_the_papers():
    paper = yaml.safe_load(PAPER.read_text())
    ours = yaml.safe_load(REHEARSAL.read_text())
    changed = [p for p, _ in rehearsal.changed_paths(paper)]
    compared = 0
    for path, value in _leaves(paper):
        if any(path[: len(c)] == c for c in changed):
            continue
        node = ours
        for key in path:
            node = node[key]
        assert node == value, f"{'.'.join(path)}: rehearsal {node!r} != paper {value!r}"
        compared += 1
    assert compared > 50
    # The paper values a rehearsal exists to exercise are among them.
    for path in (
        ("engine", "max_model_len"),
        ("distill", "max_tokens"),
        ("sft", "cutoff"),
        ("sft", "packing"),
        ("eval", "max_new_tokens"),
        ("distill", "enable_thinking"),
    ):
        assert path not in changed


def test_every_hub_model_becomes_a_twin_with_published_facts():
    paper = yaml.safe_load(PAPER.read_text())
    ours = yaml.safe_load(REHEARSAL.read_text())
    refs = rehearsal.model_refs(paper)
    assert refs, "paper.yaml names no Hub model"
    for path, model_id in refs:
        node = ours
        for key in path:
            node = node[key]
        assert node == {"twin": model_id}
        assert model_id in ours["twins"]["models"]
        assert (REPO / ours["twins"]["facts"] / model_id.replace("/", "__") / "config.json").is_file()
    assert rehearsal.model_refs(ours) == []  # nothing is left to download


def test_rehearsal_plans_with_twin_jobs(tmp_path):
    """Snakemake validates the rehearsal config and plans the selector's twin before its select shard."""
    for name in ("Snakefile", "rules", "config", "profiles", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    target = "results/rehearsal/select/shards/1-of-2.parquet"
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", target, "-n", "--cores", "1", "--configfile", "config/rehearsal.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "twin_model" in res.stdout and "THU-KEG__AdaptThink-7B-delta0.05" in res.stdout
