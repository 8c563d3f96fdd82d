"""Shared fixtures: tiny real models (built with the project's own tiny-model code)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "config" / "data" / "pool"

# Engine settings small enough for 2 cores / 1 GiB of KV cache.
ENGINE = {"dtype": "float32", "max_model_len": 4096, "batch_size": 64, "cpu_kv_cache_gb": 1, "enforce_eager": True}
ARCH = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
}

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


def train_constant(base: Path, out: Path, response: str, template_user: str = "x") -> Path:
    """Train ``base`` so that, whatever the prompt, it answers ``response`` (known behaviour)."""
    from transformers import AutoTokenizer

    from scalediff.tiny import read_corpus
    from scalediff.train import train

    tok = AutoTokenizer.from_pretrained(base)
    corpus = read_corpus([str(POOL / "aime_1983_2023.jsonl"), str(POOL / "math_train.jsonl")])[::40]
    examples = [
        {
            "prompt": tok.apply_chat_template(
                [{"role": "user", "content": r["problem"]}], tokenize=False, add_generation_prompt=True
            ),
            "response": response,
        }
        for r in corpus
    ]
    settings = {
        "lr": 1e-2,
        "scheduler": "constant",
        "per_device_batch_size": 16,
        "cutoff": 256,
        "seed": 0,
        "epochs": 1,
        "progress": False,
    }
    train(str(base), examples, str(out), settings, max_steps=40)
    return out


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
