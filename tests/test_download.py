"""Hub downloads: fetched once at a pinned revision through the Hub cache; jobs get local paths."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_config import _dry_run, _workdir

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": '{"model_type": "qwen2"}\n', "tokenizer_config.json": "{}\n", "sub/extra.txt": "x" * 1000}


def hub_cache(root: Path, repo_id: str, repo_type: str = "model", files: dict[str, str] = FILES) -> Path:
    """A Hub cache in the Hub's own layout: blobs by content hash, a snapshot of links, refs/main."""
    repo = root / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, text in files.items():
        blob = repo / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(text)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


def _download(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scalediff.download", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )


def test_download_links_the_pinned_snapshot_and_records_its_size(tmp_path):
    cache = hub_cache(tmp_path / "cache", "org/tiny")
    out = tmp_path / "hub" / "models" / "org__tiny"
    summary = tmp_path / "hub" / "models" / "org__tiny.json"
    res = _download(
        "--repo-id", "org/tiny", "--revision", COMMIT, "--cache-dir", str(cache),
        "--output", str(out), "--summary", str(summary),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(FILES)
    assert all((out / name).read_text() == text for name, text in FILES.items())
    info = json.loads(summary.read_text())
    assert info["snapshot"] == COMMIT and info["files"] == 3
    assert info["bytes"] == sum(len(t) for t in FILES.values())
    assert "GB" in res.stderr  # the size is printed
    assert "not pinned" not in res.stderr


def test_branch_revision_resolves_through_refs_and_is_logged_unpinned(tmp_path):
    cache = hub_cache(
        tmp_path / "cache", "org/data", "dataset", {"math.jsonl": '{"problem": "1+1"}\n', "other.jsonl": ""}
    )
    out = tmp_path / "data"
    res = _download(
        "--repo-type", "dataset", "--repo-id", "org/data", "--revision", "main", "--cache-dir", str(cache),
        "--allow-pattern", "math.jsonl", "--output", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["math.jsonl"]  # only the files the config reads
    assert "not pinned" in res.stderr


def test_a_revision_missing_from_the_cache_fails_offline_and_leaves_no_output(tmp_path):
    cache = hub_cache(tmp_path / "cache", "org/tiny")
    out = tmp_path / "m"
    res = _download("--repo-id", "org/tiny", "--revision", "f" * 40, "--cache-dir", str(cache), "--output", str(out))
    assert res.returncode != 0
    assert not out.exists() and list(tmp_path.glob(".m.*")) == []


def _hub_config(cache: Path):
    def edit(cfg: dict) -> None:
        cfg["hub"] = {"dir": "resources/hub", "cache_dir": str(cache), "revisions": {"org/tiny": COMMIT}}
        cfg["models"]["teacher"] = {"path": "org/tiny"}

    return edit


@pytest.mark.slow
def test_workflow_fetches_hub_models_first_and_jobs_load_the_local_copy(tmp_path):
    cache = hub_cache(tmp_path / "cache", "org/tiny")
    (workdir := tmp_path / "wf").mkdir()
    _workdir(workdir, "config.yaml", _hub_config(cache))
    res = _dry_run(workdir, "-p", "results/distill/solutions.parquet")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "rule download_model:" in res.stdout
    shard_cmds = [ln for ln in res.stdout.splitlines() if "scalediff.distill shard" in ln]
    assert shard_cmds and all("--model resources/hub/models/org__tiny " in ln for ln in shard_cmds)

    # The download rule itself, offline against the pre-filled cache (as on an air-gapped site).
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "resources/hub/models/org__tiny"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (workdir / "resources/hub/models/org__tiny/config.json").read_text() == FILES["config.json"]


def test_hub_id_without_a_pinned_revision_fails_naming_it(tmp_path):
    def edit(cfg: dict) -> None:
        _hub_config(tmp_path)(cfg)
        cfg["models"]["selector"] = {"path": "org/unpinned"}

    (tmp_path / "wf").mkdir()
    res = _dry_run(_workdir(tmp_path / "wf", "config.yaml", edit))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "hub.revisions" in out and "org/unpinned" in out, out[-2000:]
