"""Shared fixtures: tiny real models (built with the project's own tiny-model code)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "config" / "data" / "pool"

# The engine settings the demo runs (config/config.yaml, as rules/common.smk engine_settings hands
# them to a job), so tests exercise them; only the KV cache is capped (1 GiB) for a shared 2-core machine.
_ENGINE_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["engine"]
ENGINE = {k: v for k, v in _ENGINE_CONFIG.items() if k != "models"}  # per-model overrides: none here
ENGINE["cpu_kv_cache_gb"] = min(ENGINE.get("cpu_kv_cache_gb", 1), 1)
ARCH = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
}

log = logging.getLogger(__name__)
CUTOFF = 256  # tokens of prompt + response that train_constant trains on
DEFAULT_CHECK_PROMPTS = ("What is 2+3?", "Compute 7*8.")  # short questions, unlike the pool's problems

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def build_tiny(path: Path, template: str = "qwen3", arch: str = "qwen3", rows: int = 400, vocab: int = 800) -> Path:
    """Save an untrained tiny model + tokenizer (real architecture and template) at ``path``."""
    from scalediff.tiny import build_model, build_tokenizer, read_corpus

    corpus = read_corpus([str(POOL / "math_train.jsonl")])[:rows]
    tok = build_tokenizer(corpus, vocab, template)
    model = build_model(arch, tok, ARCH, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _problems() -> list[str]:
    from scalediff.tiny import read_corpus

    return [r["problem"] for r in read_corpus([str(POOL / "aime_1983_2023.jsonl"), str(POOL / "math_train.jsonl")])]


def constant_behaviour_error(model_dir: Path, response: str, prompts: Sequence[str], min_prob: float) -> str | None:
    """Why ``model_dir`` does not answer ``response`` to every user prompt, or None if it does.

    Greedy generation (transformers) must reproduce the response token for token, and every one of
    its tokens must have probability >= ``min_prob``, so sampling at the tests' temperatures and
    top_p (T <= 1, top_p <= min_prob) gives the same text.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    target = tok.encode(response, add_special_tokens=False)
    for user in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=len(target), do_sample=False, pad_token_id=tok.pad_token_id
            )
            logits = model(torch.tensor([ids + target])).logits[0, len(ids) - 1 : -1]
        got = out[0, len(ids) :].tolist()
        probs = logits.float().softmax(-1)[torch.arange(len(target)), torch.tensor(target)]
        if got != target or float(probs.min()) < min_prob:
            return (
                f"prompt {user[:40]!r}: greedy output {tok.decode(got)!r} (wanted {response!r}), "
                f"lowest target-token probability {float(probs.min()):.3f} (wanted >= {min_prob})"
            )
    return None


def train_constant(
    base: Path,
    out: Path,
    response: str,
    prompts: Sequence[str] | None = None,
    check_prompts: Sequence[str] = (),
    rounds: int = 6,
    steps: int = 40,
    lr: float = 1e-2,
    min_prob: float = 0.9,
) -> Path:
    """Train ``base`` so that, whatever the prompt, it answers ``response`` — and check that it does.

    A fixed number of steps is not a guarantee (40 steps at a constant 1e-2 once ended at loss 0.46
    without the response). So: train in rounds of ``steps`` steps, each continuing from the last
    (warm-up, then linear decay: every round ends at a low learning rate); after each round check the
    behaviour (``constant_behaviour_error``) on prompts never trained on: some of ``prompts`` held out,
    plus ``check_prompts`` (those the tests will send); stop when it holds, fail naming what the
    model said after ``rounds`` rounds. ``prompts`` are user messages (default: pool problems, and
    short questions are checked too); only those that fit in ``CUTOFF`` tokens with the response are used.
    """
    from transformers import AutoTokenizer

    from scalediff.train import train

    tok = AutoTokenizer.from_pretrained(base)

    def chat(user: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

    def fits(user: str) -> bool:
        return len(tok.encode(chat(user) + response, add_special_tokens=False)) <= CUTOFF

    users = [u for u in (_problems()[::40] if prompts is None else prompts) if fits(u)]
    held_out = users[5::10][:4]
    checked = [*held_out, *(DEFAULT_CHECK_PROMPTS if prompts is None else ()), *check_prompts]
    examples = [{"prompt": chat(u), "response": response} for u in users if u not in held_out]
    current, error = base, None
    for k in range(rounds):
        settings = {
            "lr": lr,
            "scheduler": "linear",
            "warmup_ratio": 0.25,  # each round starts a fresh Adam: full-size first steps would undo the last round
            "per_device_batch_size": 16,
            "cutoff": CUTOFF,
            "seed": k,
            "epochs": 1,
            "progress": False,
        }
        step_dir = out.with_name(f"{out.name}.round{k}")
        train(str(current), examples, str(step_dir), settings, max_steps=steps)
        if current != base:
            shutil.rmtree(current)
        current = step_dir
        error = constant_behaviour_error(current, response, checked, min_prob)
        log.info("train_constant %s, round %d: %s", out.name, k, error or "has the behaviour")
        if error is None:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(current, out)
            return out
    raise AssertionError(f"train_constant: no constant {response!r} after {rounds} rounds of {steps} steps: {error}")


@pytest.fixture(scope="session")
def tiny_r1(tmp_path_factory) -> Path:
    """Untrained tiny selector-shaped model (R1 template that opens <think>)."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "r1", template="r1", arch="qwen2")


@pytest.fixture(scope="session")
def always_nothink(tmp_path_factory, tiny_r1) -> Path:
    """A selector whose first token is always </think>: every problem is simple."""
    return train_constant(tiny_r1, tmp_path_factory.mktemp("sel") / "always", "</think>")


@pytest.fixture(scope="session")
def never_nothink(tmp_path_factory, tiny_r1) -> Path:
    """A selector that always starts reasoning: every problem is difficult."""
    return train_constant(tiny_r1, tmp_path_factory.mktemp("sel") / "never", "Okay")
