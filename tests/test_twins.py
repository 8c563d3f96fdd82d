"""Model twins: the published facts in config/twins, the tokenizer/template carried onto the local BPE,
and a built twin that meets the real model's limits in vLLM (scalediff.tiny.build_twin)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalediff import tiny
from scalediff.rehearsal import TWINS_BLOCK

REPO = Path(__file__).resolve().parents[1]
FACTS = REPO / "config" / "twins"
POOL = REPO / "config" / "data" / "pool"
PAPER_MODELS = [
    "THU-KEG/AdaptThink-7B-delta0.05",
    "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen2.5-Math-7B-Instruct",
    "QizhiPei/ScaleDiff-7B",
]
ARCH = TWINS_BLOCK["architecture"]  # the twins' tiny dimensions, as the rehearsal builds them
QUESTION = [{"role": "user", "content": "What is 1+1?"}]


def _facts(model_id: str) -> dict:
    return tiny.load_facts(FACTS / tiny.twin_key(model_id))


@pytest.fixture(scope="module")
def corpus():
    return tiny.read_corpus([str(POOL / "math_train.jsonl")])[:300]


def test_every_paper_model_has_complete_published_facts():
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    sections = (paper["models"], paper["eval"]["models"])
    named = {ref["path"] for section in sections for ref in section.values() if "path" in ref}
    assert named <= set(PAPER_MODELS)
    for model_id in PAPER_MODELS:
        facts = _facts(model_id)
        ids = {t["id"] for t in facts["special_tokens"]}
        for source in (facts["config"], facts["generation_config"]):
            for key in tiny.TOKEN_ID_FIELDS:
                value = source.get(key)
                for i in value if isinstance(value, list) else [value]:
                    assert i is None or i in ids, f"{model_id} {key}={i} is not a known special token"
        assert set(facts["sources"]) >= {"config.json", "generation_config.json", "tokenizer_config.json"}


@pytest.mark.parametrize(
    ("model_id", "positions", "theta", "arch"),
    [
        ("THU-KEG/AdaptThink-7B-delta0.05", 131072, 10000, "Qwen2ForCausalLM"),
        ("Qwen/Qwen3-8B-Base", 32768, 1000000, "Qwen3ForCausalLM"),
        ("Qwen/Qwen3-8B", 40960, 1000000, "Qwen3ForCausalLM"),
        ("Qwen/Qwen2.5-Math-7B-Instruct", 4096, 10000, "Qwen2ForCausalLM"),
        ("QizhiPei/Qwen2.5-Math-7B-Instruct-RoPE-300k", 32768, 300000, "Qwen2ForCausalLM"),
        ("QizhiPei/ScaleDiff-7B", 32768, 300000, "Qwen2ForCausalLM"),
    ],
)
def test_published_context_and_rope(model_id, positions, theta, arch):
    config = _facts(model_id)["config"]
    assert (config["max_position_embeddings"], config["rope_theta"], config["architectures"]) == (
        positions,
        theta,
        [arch],
    )


def test_r1_twin_tokenizer_opens_the_thinking_block_and_adds_bos(corpus):
    tok = tiny.twin_tokenizer(_facts("THU-KEG/AdaptThink-7B-delta0.05"), corpus, 600)
    text = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>What is 1+1?<｜Assistant｜><think>\n"
    assert tok.encode("x")[0] == tok.convert_tokens_to_ids("<｜begin▁of▁sentence｜>")  # add_bos_token: true
    assert tok.eos_token == tok.pad_token == "<｜end▁of▁sentence｜>"
    # </think> is an ordinary added token (one id, kept in decoded text), as in the R1-Distill tokenizer
    ids = tok.encode("</think>", add_special_tokens=False)
    assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=True) == "</think>"


def test_qwen3_twin_template_switches_thinking(corpus):
    tok = tiny.twin_tokenizer(_facts("Qwen/Qwen3-8B"), corpus, 600)
    on = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    assert tok.encode("x")[:1] != [tok.convert_tokens_to_ids("<|endoftext|>")]  # no BOS added
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("model_id", ["Qwen/Qwen2.5-Math-7B-Instruct", "QizhiPei/ScaleDiff-7B"])
def test_math_twin_template_inserts_its_default_system_prompt(corpus, model_id):
    tok = tiny.twin_tokenizer(_facts(model_id), corpus, 600)
    text = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_twin_settings_map_token_ids_by_text(corpus):
    facts = _facts("Qwen/Qwen3-8B")
    tok = tiny.twin_tokenizer(facts, corpus, 600)
    settings, generation = tiny.twin_settings(facts, tok)
    assert settings["max_position_embeddings"] == 40960 and settings["tie_word_embeddings"] is False
    assert tok.convert_ids_to_tokens(settings["eos_token_id"]) == "<|im_end|>"
    assert tok.convert_ids_to_tokens(generation["eos_token_id"]) == ["<|im_end|>", "<|endoftext|>"]
    assert (generation["temperature"], generation["top_p"], generation["top_k"]) == (0.6, 0.95, 20)


def test_differences_refuse_a_twin_whose_template_is_not_the_published_one(corpus):
    facts = _facts("Qwen/Qwen2.5-Math-7B-Instruct")
    tok = tiny.twin_tokenizer(facts, corpus, 600)
    settings, generation = tiny.twin_settings(facts, tok)
    model = tiny.build_model("qwen2", tok, ARCH, 0, settings=settings, generation=generation)
    config = {**json.loads(model.config.to_json_string()), "architectures": ["Qwen2ForCausalLM"]}  # as saved
    assert "config.max_position_embeddings" not in tiny.twin_differences(facts, config, generation, tok)
    tok.chat_template = tok.chat_template.replace("Please reason step by step", "Reason")
    with pytest.raises(ValueError, match="chat template"):
        tiny.twin_differences(facts, config, generation, tok)
    config["max_position_embeddings"] = 32768  # a twin that lost the real context length
    tok.chat_template = facts["tokenizer_config"]["chat_template"]
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny.twin_differences(facts, config, generation, tok)


@pytest.mark.slow
def test_built_twin_keeps_the_real_limits_in_vllm(tmp_path):
    """The Qwen2.5-Math-7B-Instruct twin: twin.json for the planner, and vLLM refuses 32,768 tokens as it
    does for the real model (issue 11), while 4,096 loads and generates."""

    model_id = "Qwen/Qwen2.5-Math-7B-Instruct"
    config = {
        "seed": 0,
        "twins": {
            "facts": str(FACTS),
            "corpus": [str(POOL / "math_train.jsonl")],
            "vocab_size": 800,
            "max_seq_len": 128,
            "architecture": ARCH,
            "models": {model_id: {"task": "student", "steps": 2, "lr": 3.0e-3, "batch_size": 4}},
        },
    }
    out = tmp_path / "twin"
    import torch

    with torch.enable_grad():  # an in-process engine earlier in the suite turns grad mode off globally
        tiny.build_twin(config, model_id, str(out), 0, str(tmp_path / "loss.csv"), str(tmp_path / "summary.json"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    # a shaping run shorter than the trainer's default logging interval must still report its losses
    assert summary["steps"] == 2 and summary["first_loss"] is not None and summary["last_loss"] is not None
    twin = json.loads((out / tiny.TWIN_JSON).read_text())
    assert twin["real_config"] == _facts(model_id)["config"]
    assert twin["sources"] == _facts(model_id)["sources"]
    allowed = {f"config.{k}" for k in (*tiny.DIMENSIONS, "vocab_size", *tiny.TOKEN_ID_FIELDS)}
    allowed |= {f"generation_config.{k}" for k in tiny.TOKEN_ID_FIELDS} | {"tokenizer.vocabulary"}
    assert set(twin["differences"]) <= allowed
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_position_embeddings"] == 4096 and saved["dtype"] == "bfloat16"

    # vLLM in a fresh process: an engine loaded in-process by an earlier test leaves state behind.
    probe = f"""
import json, sys
from scalediff.engine import Engine
engine = {{"dtype": "bfloat16", "enforce_eager": True, "enable_chunked_prefill": False, "cpu_kv_cache_gb": 1}}
try:
    Engine({str(out)!r}, {{**engine, "max_model_len": 32768, "max_num_batched_tokens": 32768}})
    refused = ""
except Exception as exc:
    refused = str(exc)
e = Engine({str(out)!r}, {{**engine, "max_model_len": 4096, "max_num_batched_tokens": 4096}})
prompt = e.chat_prompt({QUESTION!r})
[[completion]] = e.generate([prompt], {{"temperature": 0, "max_tokens": 4}})
print(json.dumps({{"refused": refused, "prompt": e.tokenizer.decode(prompt), "tokens": completion.completion_tokens}}))
"""
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert "max_position_embeddings=4096" in seen["refused"]
    assert seen["prompt"].startswith("<|im_start|>system\nPlease reason step by step")
    assert seen["tokens"] >= 1
