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

Twins (``build_twin``, the rehearsal's models): the same tokenizer training, model and shaping, but every
setting that changes behaviour comes from the real model's published files, kept as data in
``config/twins/<org>__<name>/`` (``config.json``, ``generation_config.json``, ``tokenizer_config.json``
with the chat template verbatim, ``special_tokens.json`` with the added tokens and their real ids,
``SOURCES.md`` with where each fact came from). A twin keeps the real architecture class,
``max_position_embeddings``, rope settings, sliding window, tied embeddings, ``rms_norm_eps``, the
special tokens and their roles (bos/eos/pad, special or not), ``add_bos_token``, ``model_max_length``,
the chat template and the generation defaults; bos/eos/pad ids are mapped by token text onto the twin's
vocabulary. Only the dimensions, the vocabulary (a local BPE) and the weights are tiny.

Next to the model files every twin directory holds ``twin.json`` (``TWIN_JSON``), read by the preflight
planner for the real model's dimensions:

- ``model``: the Hub id the twin stands in for;
- ``real_config``: the real model's ``config.json`` dict, verbatim;
- ``real_generation_config``: its ``generation_config.json`` dict, verbatim;
- ``sources``: ``{file or fact: where it came from}`` (from the facts directory's ``sources.json``);
- ``differences``: ``{field: {"real": ..., "twin": ..., "why": ...}}`` for every behaviour field that differs.
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


def build_tokenizer(
    corpus: list[dict[str, Any]],
    vocab_size: int,
    template: str,
    *,
    special: list[str] | None = None,
    added: list[str] | None = None,
    roles: dict[str, str | None] | None = None,
    add_bos_token: bool = False,
    model_max_length: int = 1_000_000,
):
    """Byte-level BPE trained here, with the given special tokens, roles and chat template.

    ``template`` is a name in ``TEMPLATES`` or a Jinja template itself (a twin's, verbatim). ``special``
    are special tokens (skipped when decoding), ``added`` ordinary added tokens (``<think>`` in Qwen3 and
    R1: visible in decoded text); ``roles`` maps bos/eos/pad/unk to token text.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL_TOKENS if special is None else special
    added = THINK_TOKENS if added is None else added
    roles = {"eos": "<|im_end|>", "pad": "<|endoftext|>"} if roles is None else roles
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [r.get("problem") or "" for r in corpus] + [r.get("solution") or "" for r in corpus]
    texts += [FINAL_ANSWER, EVAL_STYLE_ANSWER, "Okay, let me think.", "Please reason step by step"] * 50
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=roles.get("bos"),
        eos_token=roles.get("eos"),
        pad_token=roles.get("pad"),
        unk_token=roles.get("unk"),
        add_bos_token=add_bos_token,
        model_max_length=model_max_length,
    )
    fast.chat_template = TEMPLATES.get(template, template)
    return fast


def build_model(
    arch: str,
    tokenizer: Any,
    spec: dict[str, Any],
    seed: int,
    *,
    settings: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
):
    """A randomly initialised Qwen2/Qwen3 model of ``spec``'s dimensions.

    ``settings`` (a twin's real config fields, token ids already mapped) and ``generation`` (its
    generation defaults) replace the tiny defaults: tied embeddings and Qwen's ChatML ids.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        intermediate_size=spec["intermediate_size"],
    )
    if settings is None:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        common.update(
            max_position_embeddings=spec["max_position_embeddings"],
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        )
        generation = dict(
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
            pad_token_id=ids["<|endoftext|>"],
        )
    else:
        common.update(settings)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=spec["head_dim"], **common))
    else:
        if spec["hidden_size"] // spec["num_attention_heads"] != spec["head_dim"]:
            raise ValueError("qwen2 derives head_dim = hidden_size / num_attention_heads; they disagree")
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.generation_config = GenerationConfig(**(generation or {}))
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


def _shape(
    tokenizer: Any,
    model: Any,
    task: dict[str, Any],
    corpus: list[dict[str, Any]],
    max_seq_len: int,
    output: str,
    seed: int,
    loss_csv: str,
) -> dict[str, Any]:
    """Save the initial checkpoint, run the shaping task on it through the project's trainer."""
    import shutil

    from scalediff.train import train

    init_dir = Path(output + ".init")
    model.save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    examples = shaping_examples(task["task"], corpus, tokenizer, task["steps"] * task["batch_size"], seed)
    settings = {
        "lr": task["lr"],
        "scheduler": "cosine",
        "warmup_ratio": 0.1,
        "weight_decay": 0.0,
        "per_device_batch_size": task["batch_size"],
        "grad_accum": 1,
        "cutoff": max_seq_len,
        "bf16": False,
        "seed": seed,
        "epochs": 1,
        "logging_steps": 1,  # every step's loss: a shaping run of fewer steps than the default interval logs none
    }
    stats = train(str(init_dir), examples, output, settings, loss_csv=loss_csv, max_steps=task["steps"] or None)
    shutil.rmtree(init_dir, ignore_errors=True)
    return stats


def build_role(config: dict[str, Any], role: str, output: str, seed: int, loss_csv: str, summary: str) -> None:
    """Tokenizer + model + shaping run for one role, saved like any Hub checkpoint."""
    tiny = config["tiny"]
    spec = tiny["roles"][role]
    corpus = read_corpus(tiny["corpus"])
    tokenizer = build_tokenizer(corpus, tiny["vocab_size"], spec["template"])
    model = build_model(spec["arch"], tokenizer, tiny["architecture"], seed)
    n_params = sum(p.numel() for p in model.parameters())
    stats = _shape(tokenizer, model, spec, corpus, tiny["max_seq_len"], output, seed, loss_csv)
    write_json({"role": role, "parameters": n_params, "vocab_size": len(tokenizer), **spec, **stats}, summary)
    log.info("tiny %s: %d parameters, loss %.3f -> %.3f", role, n_params, stats["first_loss"], stats["last_loss"])


# ---------------------------------------------------------------------------------------------- twins
TWIN_JSON = "twin.json"
FACT_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens.json", "sources.json")
# Real config fields a twin keeps as published (with token ids mapped): everything that changes behaviour.
KEPT_CONFIG = (
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "tie_word_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "attention_dropout",
)
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
WHY = {
    "dimensions": "tiny weights that run on 2 CPU cores; head_dim in vLLM CPU attention's supported set",
    "vocab_size": "local byte-level BPE trained on the pool texts (the real Qwen2 vocabulary is on no package"
    " registry); special and added tokens are the real ones, with the same roles",
    "token_id": "same token text, its id in the twin's vocabulary",
    "dtype": "shaped on CPU in float32; the engine's `dtype` setting decides how it is loaded",
}
DIMENSIONS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def twin_key(model_id: str) -> str:
    """Directory name of a twin (and of its facts): ``org/name`` -> ``org__name``."""
    return model_id.replace("/", "__")


def load_facts(facts_dir: str | Path) -> dict[str, Any]:
    """The published files of one real model (``config/twins/<org>__<name>/``)."""
    facts_dir = Path(facts_dir)
    out = {}
    for name in FACT_FILES:
        with open(facts_dir / name, encoding="utf-8") as fh:
            out[name.removesuffix(".json")] = json.load(fh)
    return out


def _token_text(value: Any) -> str | None:
    """A tokenizer_config role entry: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def twin_tokenizer(facts: dict[str, Any], corpus: list[dict[str, Any]], vocab_size: int):
    """The real special tokens (same order, same special flag, same roles) on a locally trained BPE."""
    tc = facts["tokenizer_config"]
    added = sorted(facts["special_tokens"], key=lambda t: t["id"])
    roles = {r: _token_text(tc.get(f"{r}_token")) for r in ("bos", "eos", "pad", "unk")}
    return build_tokenizer(
        corpus,
        vocab_size,
        tc["chat_template"],
        special=[t["content"] for t in added if t["special"]],
        added=[t["content"] for t in added if not t["special"]],
        roles=roles,
        add_bos_token=bool(tc.get("add_bos_token", False)),
        model_max_length=int(tc.get("model_max_length", 1_000_000)),
    )


def _map_ids(value: Any, real_text: dict[int, str], tokenizer: Any) -> Any:
    """Real token id(s) -> the twin's id(s) for the same token text."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_map_ids(v, real_text, tokenizer) for v in value]
    if int(value) not in real_text:
        raise ValueError(f"token id {value} is not in special_tokens.json: cannot map it onto the twin")
    return tokenizer.convert_tokens_to_ids(real_text[int(value)])


def twin_settings(facts: dict[str, Any], tokenizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config fields, generation defaults) of a twin: the real ones, token ids mapped."""
    real, gen = facts["config"], facts["generation_config"]
    real_text = {int(t["id"]): t["content"] for t in facts["special_tokens"]}
    settings = {k: real[k] for k in KEPT_CONFIG if k in real}
    settings.update({k: _map_ids(real[k], real_text, tokenizer) for k in TOKEN_ID_FIELDS if k in real})
    generation = {k: v for k, v in gen.items() if k not in ("transformers_version", "_from_model_config")}
    generation.update({k: _map_ids(gen[k], real_text, tokenizer) for k in TOKEN_ID_FIELDS if k in gen})
    return settings, generation


def _arch(config: dict[str, Any]) -> str:
    kind = config.get("model_type") or ""
    if kind not in ("qwen2", "qwen3"):
        raise ValueError(f"twins exist for Qwen2/Qwen3 architectures only, not {kind!r}")
    return kind


def effective_config(config: dict[str, Any], token_text: dict[int, str]) -> dict[str, Any]:
    """What a config means for the engines, whatever its spelling (transformers 4 or 5)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", config.get("rope_theta"))
    if rope.get("rope_type", rope.get("type")) == "default":
        rope = {}
    heads = config["num_attention_heads"]
    out = {
        "architectures": config.get("architectures"),
        "model_type": config.get("model_type"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "rope_theta": float(theta) if theta is not None else None,
        "rope_scaling": rope or None,
        "sliding_window": config.get("sliding_window") if config.get("use_sliding_window") else None,
        "tie_word_embeddings": config.get("tie_word_embeddings"),
        "rms_norm_eps": config.get("rms_norm_eps"),
        "hidden_act": config.get("hidden_act"),
        "attention_bias": config.get("attention_bias", False),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "vocab_size": config.get("vocab_size"),
        "dtype": config.get("dtype", config.get("torch_dtype")),
    }
    out.update({k: config.get(k) for k in DIMENSIONS if k != "head_dim"})
    for k in TOKEN_ID_FIELDS:
        if config.get(k) is not None:
            ids = config[k] if isinstance(config[k], list) else [config[k]]
            out[k.replace("_id", "")] = [token_text.get(int(i)) for i in ids]
            out[k] = config[k]
    return out


def twin_differences(
    facts: dict[str, Any], twin_config: dict[str, Any], twin_generation: dict[str, Any], tokenizer: Any
) -> dict[str, dict[str, Any]]:
    """Every behaviour field where the twin differs from the real model, with the reason."""
    real_text = {int(t["id"]): t["content"] for t in facts["special_tokens"]}
    twin_text = {i: t for t, i in tokenizer.get_vocab().items()}
    real = effective_config(facts["config"], real_text)
    twin = effective_config(twin_config, twin_text)
    diffs: dict[str, dict[str, Any]] = {}
    for key, real_value in real.items():
        if twin.get(key) == real_value:
            continue
        if key in DIMENSIONS:
            why = WHY["dimensions"]
        elif key in TOKEN_ID_FIELDS:
            why = WHY["token_id"]
        elif key in WHY:
            why = WHY[key]
        else:
            raise ValueError(f"twin differs from the real model in {key!r}: {twin.get(key)!r} != {real_value!r}")
        diffs[f"config.{key}"] = {"real": real_value, "twin": twin.get(key), "why": why}
    gen = facts["generation_config"]
    for key, value in gen.items():
        if key in ("transformers_version", "_from_model_config"):
            continue
        mine = twin_generation.get(key)
        if mine == value:
            continue
        if key not in TOKEN_ID_FIELDS:
            raise ValueError(f"twin generation_config differs in {key!r}: {mine!r} != {value!r}")
        diffs[f"generation_config.{key}"] = {"real": value, "twin": mine, "why": WHY["token_id"]}
    tc = facts["tokenizer_config"]
    if tokenizer.chat_template != tc["chat_template"]:
        raise ValueError("twin chat template differs from the published one")
    # transformers 5 loads both families as Qwen2Tokenizer: check what add_bos_token does, not the attribute.
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer.encode("x")[:1] == [bos]
    if adds_bos != bool(tc.get("add_bos_token", False)):
        raise ValueError(f"twin {'adds' if adds_bos else 'does not add'} a BOS token; the published tokenizer differs")
    diffs["tokenizer.vocabulary"] = {
        "real": facts["config"].get("vocab_size"),
        "twin": len(tokenizer),
        "why": WHY["vocab_size"],
    }
    return diffs


# tokenizer_config.json keys that change behaviour and that saving a locally trained tokenizer drops.
KEPT_TOKENIZER = (
    "add_bos_token",
    "add_eos_token",
    "clean_up_tokenization_spaces",
    "split_special_tokens",
    "errors",
    "tokenizer_class",
)


def _restore_published(facts: dict[str, Any], output: Path) -> None:
    """After shaping: the real weight dtype, ``use_cache`` and tokenizer flags back into the saved files
    (the trainer saves float32 weights and ``use_cache: false``; saving drops ``add_bos_token``)."""
    import torch
    from transformers import AutoModelForCausalLM

    real = facts["config"]
    dtype = real.get("torch_dtype") or real.get("dtype")
    if dtype:
        model = AutoModelForCausalLM.from_pretrained(output, dtype=getattr(torch, dtype))
        model.save_pretrained(output)
    with open(output / "config.json", encoding="utf-8") as fh:
        config = json.load(fh)
    if "use_cache" in real:
        config["use_cache"] = real["use_cache"]
    write_json(config, str(output / "config.json"))
    with open(output / "tokenizer_config.json", encoding="utf-8") as fh:
        tok = json.load(fh)
    tok.update({k: v for k, v in facts["tokenizer_config"].items() if k in KEPT_TOKENIZER})
    write_json(tok, str(output / "tokenizer_config.json"))


def build_twin(config: dict[str, Any], model_id: str, output: str, seed: int, loss_csv: str, summary: str) -> None:
    """A twin of ``model_id``: the real model's published settings on tiny, shaped weights."""
    twins = config["twins"]
    spec = twins["models"][model_id]
    facts_dir = Path(twins["facts"]) / twin_key(model_id)
    facts = load_facts(facts_dir)
    corpus = read_corpus(twins["corpus"])
    tokenizer = twin_tokenizer(facts, corpus, twins["vocab_size"])
    settings, generation = twin_settings(facts, tokenizer)
    arch = _arch(facts["config"])
    model = build_model(arch, tokenizer, twins["architecture"], seed, settings=settings, generation=generation)
    n_params = sum(p.numel() for p in model.parameters())
    stats = _shape(tokenizer, model, spec, corpus, twins["max_seq_len"], output, seed, loss_csv)
    _restore_published(facts, Path(output))
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(output)
    with open(Path(output) / "config.json", encoding="utf-8") as fh:
        saved_config = json.load(fh)
    with open(Path(output) / "generation_config.json", encoding="utf-8") as fh:
        saved_generation = json.load(fh)
    twin = {
        "model": model_id,
        "real_config": facts["config"],
        "real_generation_config": facts["generation_config"],
        "sources": facts["sources"],
        "differences": twin_differences(facts, saved_config, saved_generation, saved),
    }
    write_json(twin, str(Path(output) / TWIN_JSON))
    write_json({"model": model_id, "parameters": n_params, "vocab_size": len(tokenizer), **spec, **stats}, summary)
    log.info("twin %s: %d parameters, loss %.3f -> %.3f", model_id, n_params, stats["first_loss"], stats["last_loss"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build and shape one tiny model: an embedded-default role or a twin.")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--role", help="a role under the config's `tiny.roles`")
    which.add_argument("--twin", help="a Hub id under the config's `twins.models` (or its org__name key)")
    ap.add_argument("--output", required=True, help="model directory to create")
    ap.add_argument("--loss-csv", required=True)
    ap.add_argument("--summary", required=True)
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    config = cli.load_settings(args)
    if args.twin:
        by_key = {twin_key(m): m for m in config["twins"]["models"]}
        model_id = by_key.get(args.twin, args.twin)
        build_twin(config, model_id, args.output, config["seed"], args.loss_csv, args.summary)
    else:
        build_role(config, args.role, args.output, config["seed"], args.loss_csv, args.summary)


if __name__ == "__main__":
    main()
