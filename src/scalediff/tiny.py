"""Tiny models with real architectures, real special tokens and real chat templates.

The embedded default cannot download Qwen/AdaptThink weights, so the workflow builds one tiny
model per role: a byte-level BPE tokenizer trained on the pool texts, a Qwen2/Qwen3 model of a
few hundred thousand parameters, and a short training run (through the project's one trainer)
that gives each model the *shape* of the real one:

- selector (R1-style template that opens ``<think>\\n``): emits ``</think>`` first on easy
  problems, a reasoning token on hard ones;
- generator_base: a base LM that has seen problem text (raw and ChatML-wrapped, as Qwen3-Base has);
- teacher (Qwen3 template, thinking on): ``<think> … </think>`` then a ``\\boxed{}`` answer;
- student_base (ChatML, like Qwen2.5-Math-Instruct): a short solution ending in ``\\boxed{}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

from scalediff import cli
from scalediff.records import write_json

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]  # ordinary added tokens in Qwen3: visible in decoded text

_MESSAGES = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
)
TEMPLATES = {
    # Qwen3: the model opens <think> itself; enable_thinking=false closes an empty block.
    "qwen3": _MESSAGES + "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}{%- endif -%}",
    # R1-Distill / AdaptThink: the generation prompt already opens the thinking block.
    "r1": _MESSAGES + "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}",
    # Qwen2.5-Instruct style ChatML.
    "chatml": _MESSAGES + "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
}

# Fixed phrases the shaped models produce; in the tokenizer corpus so they tokenize compactly.
FINAL_ANSWER = "The final answer is $\\boxed{{{answer}}}$."
EVAL_STYLE_ANSWER = "Therefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"


def read_corpus(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    row["_file"] = Path(path).name
                    rows.append(row)
    return rows


def build_tokenizer(corpus: list[dict[str, Any]], vocab_size: int, template: str):
    """Byte-level BPE trained here, with Qwen's special tokens and the given chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [r.get("problem") or "" for r in corpus] + [r.get("solution") or "" for r in corpus]
    texts += [FINAL_ANSWER, EVAL_STYLE_ANSWER, "Okay, let me think.", "Please reason step by step"] * 50
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=1_000_000,
    )
    fast.chat_template = TEMPLATES[template]
    return fast


def build_model(arch: str, tokenizer: Any, spec: dict[str, Any], seed: int):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        intermediate_size=spec["intermediate_size"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=spec["head_dim"], **common))
    else:
        if spec["hidden_size"] // spec["num_attention_heads"] != spec["head_dim"]:
            raise ValueError("qwen2 derives head_dim = hidden_size / num_attention_heads; they disagree")
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    return model


def _is_hard(row: dict[str, Any]) -> bool | None:
    """AIME is hard, MATH level 1-2 easy; other rows carry no clear label for shaping."""
    if "aime" in row["_file"]:
        return True
    level = row.get("difficulty")
    if isinstance(level, (int, float)) and level <= 2:
        return False
    return None


def _short_reasoning(row: dict[str, Any], words: int) -> str:
    text = " ".join((row.get("solution") or "").split()[:words])
    return text or "Let me work through the problem step by step."


def shaping_examples(
    task: str, corpus: list[dict[str, Any]], tokenizer: Any, n: int, seed: int
) -> list[dict[str, str]]:
    """{prompt, response} pairs that teach one role its output shape."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token

    def chat(content: str, **kw: Any) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, **kw
        )

    examples: list[dict[str, str]] = []
    if task == "selector":
        labelled = [(r, h) for r in corpus if (h := _is_hard(r)) is not None]
        hard = [r for r, h in labelled if h]
        easy = [r for r, h in labelled if not h]
        for i in range(n):  # balanced classes
            row = rng.choice(hard if i % 2 else easy)
            examples.append({"prompt": chat(row["problem"]), "response": "Okay" if i % 2 else "</think>"})
    elif task == "pretrain":
        for _ in range(n):
            row = rng.choice(corpus)
            if rng.random() < 0.5:
                examples.append({"prompt": "", "response": row["problem"] + "<|endoftext|>"})
            else:
                examples.append({"prompt": "", "response": f"<|im_start|>user\n{row['problem']}<|im_end|>\n"})
    elif task in ("teacher", "student"):
        instruction = "Please reason step by step, and put your final answer within \\boxed{}.\n"
        solved = [r for r in corpus if (r.get("solution") or "").strip()]
        for _ in range(n):
            # Half from rows with a written solution, so reasoning text is varied, not one fallback.
            row = rng.choice(solved if solved and rng.random() < 0.5 else corpus)
            answer = row.get("answer") or "0"
            if task == "teacher":
                prompt = chat(instruction + row["problem"], enable_thinking=True)
                reasoning = _short_reasoning(row, rng.randint(5, 25))
                response = f"<think>\n{reasoning}\n</think>\n\n{FINAL_ANSWER.format(answer=answer)}{eos}"
            else:
                prompt = chat(row["problem"])
                reasoning = _short_reasoning(row, rng.randint(5, 20))
                response = f"{reasoning}\n{EVAL_STYLE_ANSWER.format(answer=answer)}{eos}"
            examples.append({"prompt": prompt, "response": response})
    else:
        raise ValueError(f"unknown shaping task {task!r}")
    return examples


def build_role(config: dict[str, Any], role: str, output: str, seed: int, loss_csv: str, summary: str) -> None:
    """Tokenizer + model + shaping run for one role, saved like any Hub checkpoint."""
    from scalediff.train import train

    tiny = config["tiny"]
    spec = tiny["roles"][role]
    corpus = read_corpus(tiny["corpus"])
    tokenizer = build_tokenizer(corpus, tiny["vocab_size"], spec["template"])
    model = build_model(spec["arch"], tokenizer, tiny["architecture"], seed)
    n_params = sum(p.numel() for p in model.parameters())
    init_dir = Path(output + ".init")
    model.save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    examples = shaping_examples(spec["task"], corpus, tokenizer, spec["steps"] * spec["batch_size"], seed)
    settings = {
        "lr": spec["lr"],
        "scheduler": "cosine",
        "warmup_ratio": 0.1,
        "weight_decay": 0.0,
        "per_device_batch_size": spec["batch_size"],
        "grad_accum": 1,
        "cutoff": tiny["max_seq_len"],
        "bf16": False,
        "seed": seed,
        "epochs": 1,
    }
    stats = train(str(init_dir), examples, output, settings, loss_csv=loss_csv, max_steps=spec["steps"] or None)
    import shutil

    shutil.rmtree(init_dir, ignore_errors=True)
    write_json({"role": role, "parameters": n_params, "vocab_size": len(tokenizer), **spec, **stats}, summary)
    log.info("tiny %s: %d parameters, loss %.3f -> %.3f", role, n_params, stats["first_loss"], stats["last_loss"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build and shape one tiny model of the embedded default.")
    ap.add_argument("--role", required=True)
    ap.add_argument("--output", required=True, help="model directory to create")
    ap.add_argument("--loss-csv", required=True)
    ap.add_argument("--summary", required=True)
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    config = cli.load_settings(args)
    build_role(config, args.role, args.output, config["seed"], args.loss_csv, args.summary)


if __name__ == "__main__":
    main()
