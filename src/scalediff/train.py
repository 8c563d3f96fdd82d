"""The one trainer: causal-LM fine-tuning with the loss on the response only.

Serves the DiffGen QFT run (prompt ``<|im_start|>user\\n``, response ``{problem}<|im_end|>\\n``),
the student SFT run, and the short shaping runs of the tiny models. transformers ``Trainer``
underneath; DeepSpeed when the settings name a config (GPU runs); checkpoints are resumed
automatically when a killed job is rerun; the loss curve is saved as CSV.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from scalediff.records import atomic_path

log = logging.getLogger(__name__)

IGNORE = -100


def is_main_process() -> bool:
    """Rank 0 of a torchrun/DeepSpeed launch (or a plain single process): the one that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def tokenize_pair(tokenizer: Any, prompt: str, response: str, cutoff: int) -> dict[str, list[int]] | None:
    """input_ids/labels for one example; prompt tokens are masked. None if nothing to learn."""
    p = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    r = tokenizer.encode(response, add_special_tokens=False)
    ids = (p + r)[:cutoff]
    labels = ([IGNORE] * len(p) + r)[:cutoff]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def pack(examples: list[dict[str, list[int]]], cutoff: int) -> list[dict[str, list[int]]]:
    """First-fit-decreasing packing of tokenized examples into rows of at most ``cutoff`` tokens.

    Each packed row carries ``position_ids`` that restart at 0 for every example; with no attention
    mask, transformers builds a block-diagonal causal mask from them, so packed examples never
    attend to each other. The first label of every example is masked: no loss across a boundary.
    """
    bins: list[list[dict[str, list[int]]]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True):
        n = len(ex["input_ids"])
        slot = next((i for i, free in enumerate(room) if free >= n), None)
        if slot is None:
            bins.append([ex])
            room.append(cutoff - n)
        else:
            bins[slot].append(ex)
            room[slot] -= n
    rows = []
    for group in bins:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for ex in group:
            row["input_ids"] += ex["input_ids"]
            row["labels"] += [IGNORE] + ex["labels"][1:]
            row["position_ids"] += list(range(len(ex["input_ids"])))
        rows.append(row)
    return rows


class FlatCollator:
    """Concatenate a batch of packed rows into one row (no padding, no attention mask)."""

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {
            key: torch.tensor([sum((f[key] for f in features), [])], dtype=torch.long)
            for key in ("input_ids", "labels", "position_ids")
        }
        # transformers derives the packed mask only without a KV cache.
        batch["use_cache"] = False
        return batch


def load_model(path: str, config_overrides: dict[str, Any] | None = None, trust_remote_code: bool = False):
    """Load a causal LM; overrides (e.g. the student's RoPE edit) go to a copy of its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for key, value in (config_overrides or {}).items():
        if key == "rope_theta" and isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters = {**config.rope_parameters, "rope_theta": value}
        setattr(config, key, value)
    return AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=trust_remote_code)


def _last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None


def train(
    base_model: str,
    examples: list[dict[str, str]],
    output_dir: str,
    settings: dict[str, Any],
    loss_csv: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    max_steps: int | None = None,
    save_steps: int = 200,
    keep_run_dir: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on ``examples`` ({prompt, response}) and save to ``output_dir``.

    Intermediate checkpoints live in ``<output_dir>.run/``; rerunning after a kill resumes from
    the last one. The finished model appears at ``output_dir`` atomically (rename of a temp dir).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    trust = bool(settings.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cutoff = int(settings["cutoff"])
    rows = [tokenize_pair(tokenizer, e["prompt"], e["response"], cutoff) for e in examples]
    kept = [r for r in rows if r is not None]
    if not kept:
        raise ValueError(f"no trainable examples for {output_dir} ({len(examples)} given)")
    n_truncated = sum(1 for e, r in zip(examples, rows, strict=True) if r is not None and len(r["input_ids"]) == cutoff)
    log.info(
        "training examples: %d in, %d usable, %d truncated at %d tokens", len(examples), len(kept), n_truncated, cutoff
    )
    n_used = len(kept)
    packing = bool(settings.get("packing", False))
    if packing:
        kept = pack(kept, cutoff)
        log.info("packed into %d rows of <= %d tokens", len(kept), cutoff)
    dataset = Dataset.from_list(kept)

    model = load_model(base_model, config_overrides, trust)
    run_dir = Path(f"{output_dir}.run")
    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=float(settings.get("epochs", 1)),
        max_steps=max_steps if max_steps else -1,
        learning_rate=float(settings["lr"]),
        lr_scheduler_type=settings.get("scheduler", "linear"),
        warmup_steps=float(settings.get("warmup_ratio", 0.0)),  # a float < 1 is a ratio in transformers 5
        weight_decay=float(settings.get("weight_decay", 0.0)),
        per_device_train_batch_size=int(settings["per_device_batch_size"]),
        gradient_accumulation_steps=int(settings.get("grad_accum", 1)),
        bf16=bool(settings.get("bf16", False)),
        seed=int(settings.get("seed", 42)),
        data_seed=int(settings.get("seed", 42)),
        use_cpu=not use_cuda,
        deepspeed=settings.get("deepspeed") or None,
        train_sampling_strategy="group_by_length",  # batches of similar length: padding makes CPU steps 3-7x slower
        logging_steps=int(settings.get("logging_steps", 5)),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        report_to=[],
        disable_tqdm=not bool(settings.get("progress", True)),
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=FlatCollator()
        if packing
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE),
    )
    resume = _last_checkpoint(run_dir)
    if resume:
        log.info("resuming from %s", resume)
    # An engine loaded earlier in the same process (vLLM) may have switched autograd off globally.
    with torch.enable_grad():
        result = trainer.train(resume_from_checkpoint=resume)
    history = trainer.state.log_history

    out = Path(output_dir)
    tmp = out.with_name(out.name + ".tmp")
    main_process = trainer.is_world_process_zero()  # under torchrun only rank 0 touches the outputs
    if main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # collective under DeepSpeed ZeRO-3; writes on rank 0 only
    if main_process:
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        if loss_csv:
            write_loss_csv(history, loss_csv)
        if not keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    losses = [h["loss"] for h in history if "loss" in h]
    return {
        "examples_in": len(examples),
        "examples_used": n_used,
        "packed_rows": len(kept) if packing else None,
        "truncated": n_truncated,
        "steps": trainer.state.global_step,
        "resumed_from": resume,
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def write_loss_csv(history: list[dict[str, Any]], path: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "epoch", "loss", "learning_rate", "grad_norm"])
        for h in history:
            if "loss" in h:
                w.writerow([h.get("step"), h.get("epoch"), h["loss"], h.get("learning_rate"), h.get("grad_norm")])
