"""Exports: the LLaMA-Factory dataset_info.json and the Hub push (dry run / missing token; the Hub is
never contacted: no test reaches the network, and huggingface_hub is not mocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalediff.export import HUB_FILES, dataset_info, hub_plan, push_to_hub
from scalediff.records import read_json, write_rows


@pytest.fixture
def dataset_dir(tmp_path):
    d = tmp_path / "results" / "filter" / "dataset"
    for split, n in (("original", 3), ("generated", 2)):
        write_rows(
            [
                {"id": f"{split}{i}", "problem": f"What is {i}+1?", "solution": f"<think>ok</think> \\boxed{{{i + 1}}}"}
                for i in range(n)
            ],
            d / f"{split}.parquet",
        )
    (d / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# card\n")
    (d / "stray.txt").write_text("not uploaded")
    return d


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "scalediff.export", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_llamafactory_dataset_info(dataset_dir, tmp_path):
    out = tmp_path / "results" / "export" / "dataset_info.json"
    proc = _run(
        "llamafactory",
        "--original",
        str(dataset_dir / "original.parquet"),
        "--generated",
        str(dataset_dir / "generated.parquet"),
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.read_text())
    assert set(info) == {"scalediff_original", "scalediff_generated"}
    for split, n in (("original", 3), ("generated", 2)):
        entry = info[f"scalediff_{split}"]
        assert entry == {
            "file_name": f"../filter/dataset/{split}.parquet",
            "formatting": "alpaca",
            "columns": {"prompt": "problem", "response": "solution"},
        }
        # what LLaMA-Factory does with a file entry: join with dataset_dir and load by extension
        from datasets import load_dataset

        path = os.path.join(out.parent, entry["file_name"])
        ds = load_dataset("parquet", data_files=path, split="train", cache_dir=str(tmp_path / "hf"))
        assert len(ds) == n
        assert ds[0][entry["columns"]["prompt"]] == "What is 0+1?"
        assert ds[0][entry["columns"]["response"]].endswith("\\boxed{1}")


def test_llamafactory_needs_problem_and_solution(tmp_path):
    write_rows([{"id": "a", "problem": "p"}], tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="solution"):
        dataset_info({"original": tmp_path / "bad.parquet"}, tmp_path)


def test_hub_missing_token_is_a_clear_error(dataset_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="HF_TOKEN is not set"):
        push_to_hub(dataset_dir, "someone/scalediff-math", private=True)
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    proc = _run("hub", "--dataset-dir", str(dataset_dir), "--repo", "someone/scalediff-math", env=env)
    assert proc.returncode != 0
    assert "HF_TOKEN is not set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hub_needs_a_repo_and_the_files(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="hub_repo"):
        hub_plan(dataset_dir, None, True)
    with pytest.raises(FileNotFoundError, match="README.md"):
        hub_plan(tmp_path, "someone/x", True)


def test_hub_dry_run_prints_the_upload(dataset_dir, tmp_path):
    plan = hub_plan(dataset_dir, "someone/scalediff-math", private=True)
    assert plan["create_repo"] == {
        "repo_id": "someone/scalediff-math",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    up = plan["upload_folder"]
    assert up["repo_id"] == "someone/scalediff-math" and up["repo_type"] == "dataset"
    assert Path(up["folder_path"]) == dataset_dir
    assert sorted(up["allow_patterns"]) == sorted(HUB_FILES) == ["README.md", "generated.parquet", "original.parquet"]
    assert "token" not in json.dumps(plan)

    secret = "hf_test_secret_value_never_printed"
    receipt = tmp_path / "receipt.json"
    env = {**os.environ, "HF_TOKEN": secret}
    proc = _run(
        "hub",
        "--dataset-dir",
        str(dataset_dir),
        "--repo",
        "someone/scalediff-math",
        "--dry-run",
        "--receipt",
        str(receipt),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "would push 3 files to https://huggingface.co/datasets/someone/scalediff-math" in out
    for name in HUB_FILES:
        assert name in out
    assert "stray.txt" not in out
    assert "HfApi.create_repo(repo_id='someone/scalediff-math', repo_type='dataset', private=True" in out
    assert "HfApi.upload_folder(" in out and "HF_TOKEN is set" in out
    assert secret not in out + proc.stderr + receipt.read_text()
    rec = read_json(receipt)
    assert rec["dry_run"] is True and set(rec["files"]) == set(HUB_FILES)
