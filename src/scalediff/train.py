"""The one trainer: causal-LM fine-tuning with the loss on the response only.

Serves the DiffGen QFT run (prompt ``<|im_start|>user\\n``, response ``{problem}<|im_end|>\\n``),
the student SFT run, and the short shaping runs of the tiny models. transformers ``Trainer``
underneath; DeepSpeed when the settings name a config (GPU runs); checkpoints are resumed
automatically when a killed job is rerun; the loss curve is saved as CSV.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalediff.device import require_cuda
from scalediff.records import Fingerprint, atomic_path, source_identity

log = logging.getLogger(__name__)

IGNORE = -100


def is_main_process() -> bool:
    """Rank 0 of a torchrun/DeepSpeed launch (or a plain single process): the one that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def single_process_rendezvous() -> None:
    """The distributed environment of a one-process run that no launcher started.

    DeepSpeed always initialises torch.distributed; without torchrun's variables it falls back to MPI
    discovery and stops on a missing ``mpi4py`` (one GPU, or the CPU rehearsal, start as a plain
    process). A launched rank keeps what its launcher set.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:  # a free port on this host for the one-member rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log.info("one process, no launcher: torch.distributed rendezvous on 127.0.0.1:%d for DeepSpeed", port)


def tokenize_pair(tokenizer: Any, prompt: str, response: str, cutoff: int) -> dict[str, list[int]] | None:
    """input_ids/labels for one example; prompt tokens are masked. None if nothing to learn."""
    p = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    r = tokenizer.encode(response, add_special_tokens=False)
    ids = (p + r)[:cutoff]
    labels = ([IGNORE] * len(p) + r)[:cutoff]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def pack_groups(lengths: Sequence[int], cutoff: int) -> list[list[int]]:
    """Best-fit-decreasing packing: groups of example indices whose lengths sum to at most ``cutoff``.

    Longest first, each into the fullest row that still has room (a new row when none has). Rows are
    found by their free space (one sorted list of the distinct free amounts, at most ``cutoff + 1``),
    so 1.7M examples pack in seconds; the whole-list scan of plain first-fit is quadratic.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    free_values: list[int] = []  # sorted distinct free space of the open rows
    rows_with_free: dict[int, list[int]] = {}
    for i in order:
        n = int(lengths[i])
        at = bisect.bisect_left(free_values, n)
        if at == len(free_values):
            row, free = len(groups), cutoff
            groups.append([])
        else:
            free = free_values[at]
            row = rows_with_free[free].pop()
            if not rows_with_free[free]:
                del rows_with_free[free], free_values[at]
        groups[row].append(i)
        left = free - n
        if left > 0:
            if left not in rows_with_free:
                rows_with_free[left] = []
                bisect.insort(free_values, left)
            rows_with_free[left].append(row)
    return groups


def packed_row(examples: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """One packed row from tokenized examples.

    ``position_ids`` restart at 0 for every example; with no attention mask, transformers builds a
    block-diagonal causal mask from them, so packed examples never attend to each other. The first
    label of every example is masked: no loss across a boundary.
    """
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        row["input_ids"] += ex["input_ids"]
        row["labels"] += [IGNORE] + ex["labels"][1:]
        row["position_ids"] += list(range(len(ex["input_ids"])))
    return row


def pack(examples: list[dict[str, list[int]]], cutoff: int) -> list[dict[str, list[int]]]:
    """Packed rows of at most ``cutoff`` tokens from tokenized examples (``pack_groups`` + ``packed_row``)."""
    groups = pack_groups([len(e["input_ids"]) for e in examples], cutoff)
    return [packed_row([examples[i] for i in g]) for g in groups]


def token_lengths(tokenizer: Any, examples: Sequence[Mapping[str, str]], batch: int = 32) -> tuple[Any, Any]:
    """(prompt, response) token counts of every example, as int64 arrays.

    Batched so a fast tokenizer spreads each batch over all cores, through the Rust tokenizer's
    ``encode_batch_fast`` (no offsets, no Python lists of ids: ~2x faster); memory holds one batch
    (~130 MB for 32 paper-length solutions), whatever the number of examples.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def count(texts: list[str]) -> list[int]:
        if backend is not None:
            return [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    n = len(examples)
    prompt, response = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    started = last_log = time.monotonic()
    for start in range(0, n, batch):
        part = [examples[i] for i in range(start, min(start + batch, n))]
        for out, key in ((prompt, "prompt"), (response, "response")):
            out[start : start + len(part)] = count([e[key] or "" for e in part])
        if time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            done = start + len(part)
            log.info("token lengths: %d / %d examples (%.0f/s)", done, n, done / (last_log - started))
    return prompt, response


class TokenizedExamples:
    """The training set as a map-style dataset that tokenizes on access.

    Holds the examples (a list, or a lazy view of Arrow data), the kept indices or packed groups,
    and their lengths; never the token ids of the whole set. ``lengths`` feeds the length-grouped
    sampler without a tokenization pass of its own.
    """

    def __init__(
        self,
        examples: Sequence[Mapping[str, str]],
        tokenizer: Any,
        cutoff: int,
        items: list[list[int]],
        lengths: list[int],
        packed: bool,
    ):
        self.examples, self.tokenizer, self.cutoff = examples, tokenizer, cutoff
        self.items, self.lengths, self.packed = items, lengths, packed

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, i: int) -> dict[str, list[int]]:
        e = self.examples[i]
        pair = tokenize_pair(self.tokenizer, e["prompt"], e["response"], self.cutoff)
        if pair is None:  # lengths said otherwise: the examples changed under the run
            raise RuntimeError(f"example {i} has nothing to learn; its cached length is stale")
        return pair

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        group = self.items[i]
        return packed_row([self.encode(j) for j in group]) if self.packed else self.encode(group[0])


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


def load_model(
    path: str,
    config_overrides: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    bf16: bool = False,
):
    """Load a causal LM; overrides (e.g. the student's RoPE edit) go to a copy of its config.

    ``bf16`` loads the weights in bfloat16 (half the host and GPU memory of fp32 while loading; the
    optimizer keeps its own fp32 master copy under DeepSpeed).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for key, value in (config_overrides or {}).items():
        if key == "rope_theta" and isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters = {**config.rope_parameters, "rope_theta": value}
        setattr(config, key, value)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16} if bf16 else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=trust_remote_code, **kwargs)


def check_kernels(settings: Mapping[str, Any], what: str) -> None:
    """Fail at start, saying why, when the settings ask for kernels this machine cannot run
    (not after the tokenization pass and model load, nor by silently falling back)."""
    import importlib.util

    import torch

    if settings.get("attn_implementation") == "flash_attention_2":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{what}: attn_implementation flash_attention_2 needs a CUDA device; none is usable")
        if importlib.util.find_spec("flash_attn") is None:
            raise RuntimeError(
                f"{what}: attn_implementation flash_attention_2 needs the flash-attn package, which is not installed"
                " (install the GPU environment, or set attn_implementation: sdpa)"
            )
    if settings.get("liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        raise RuntimeError(
            f"{what}: liger_kernel is true but the liger-kernel package is not installed"
            " (install the GPU environment, or set liger_kernel: false)"
        )


# Exit status of a run that stopped at a segment's end (EX_TEMPFAIL): checkpoint saved, rerun to continue.
SEGMENT_EXIT = 75


class SegmentClock:
    """Saves by time as well as by steps, and ends a segment on SIGUSR1 (SLURM's warning before the
    time limit, ``--signal=USR1@<s>``) or after ``segment_minutes``: the step in progress finishes, a
    checkpoint is saved and training stops. Every rank decides together (one all-reduce per step) so
    no rank stops stepping while the others wait in a collective."""

    def __init__(self, save_every_minutes: float | None, segment_minutes: float | None):
        self.save_every = save_every_minutes * 60 if save_every_minutes else None
        self.segment = segment_minutes * 60 if segment_minutes else None
        self.started = self.last_save = time.monotonic()
        self.signalled = False
        self.ended = False

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def _agree(self, save: bool, stop: bool) -> tuple[bool, bool]:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return save, stop
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flags = torch.tensor([int(save), int(stop)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def step_end(self, control: Any) -> None:
        now = time.monotonic()
        save = self.save_every is not None and now - self.last_save >= self.save_every
        stop = self.signalled or (self.segment is not None and now - self.started >= self.segment)
        save, stop = self._agree(save, stop)
        if save or stop:
            control.should_save = True
        if stop:
            control.should_training_stop = True
            self.ended = True

    def saved(self) -> None:
        self.last_save = time.monotonic()


def end_segment(run_dir: Path, step: int, requeue: bool) -> None:
    """Leave after a segment's checkpoint: under SLURM (``requeue``) rank 0 puts this job back in the
    queue, where the same job, rerun, resumes from the checkpoint; elsewhere the exit status
    ``SEGMENT_EXIT`` says to rerun."""
    job = os.environ.get("SLURM_JOB_ID")
    log.warning("segment ended at step %d: checkpoint saved in %s; a rerun resumes from it", step, run_dir)
    if requeue and job and is_main_process():
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode == 0:
            log.warning("requeued SLURM job %s", job)
        else:
            log.error("scontrol requeue %s failed (%s): rerun the workflow to continue", job, done.stderr.strip())
    sys.exit(SEGMENT_EXIT)


def examples_fingerprint(examples: Sequence[Mapping[str, str]]) -> str:
    """The identity of a training set: its own ``fingerprint`` when it has one (``sft.DatasetExamples``,
    known by its input files, tens of GB at paper scale), else a digest of every prompt and response."""
    own = getattr(examples, "fingerprint", None)
    if own is not None:
        return str(own)
    h = hashlib.sha256()
    for i in range(len(examples)):
        e = examples[i]
        h.update(json.dumps([e["prompt"], e["response"]], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def lengths_fingerprint(base_model: str, examples: Sequence[Mapping[str, str]]) -> Fingerprint:
    """What token lengths are made from: the tokenizer (the base model's) and the examples."""
    return Fingerprint(tokenizer=source_identity(base_model), examples=examples_fingerprint(examples))


def cached_lengths(
    path: Path, tokenizer: Any, examples: Sequence[Mapping[str, str]], made_from: Fingerprint
) -> tuple[np.ndarray, np.ndarray]:
    """``token_lengths`` of the examples, saved at ``path`` (a CPU job's output, or the run folder) so
    the ranks and resumed runs reuse them; ``made_from`` (tokenizer, examples) decides whether a saved
    set is still theirs."""
    if path.exists():
        cached = np.load(path)
        try:
            saved = json.loads(str(cached["fingerprint"]))
        except (KeyError, ValueError):  # none, or the bare digest of an older version
            saved = None
        if made_from.reusable(saved, f"token lengths {path}"):
            return cached["prompt"], cached["response"]
    prompt, response = token_lengths(tokenizer, examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, prompt=prompt, response=response, fingerprint=np.array(json.dumps(made_from.parts)))
    return prompt, response


def _last_checkpoint(run_dir: Path, made_by: Fingerprint) -> str | None:
    """The checkpoint to resume from: the last one in ``run_dir`` if it was made by the same run
    (``made_by``: base model, settings, data, world size). Others are deleted, saying why, so they are
    never mistaken for this run's later; rank 0 checks first (the others then find its verdict)."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    stamp = run_dir / "fingerprint.json"
    if last and not made_by.matches(stamp, f"training checkpoints in {run_dir} (not resuming)"):
        if is_main_process():
            for old in run_dir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
        last = None
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        made_by.save(stamp)
    return last


# Settings that change nothing in the trained weights: a run resumes across them.
NOT_IN_FINGERPRINT = (
    "progress",
    "logging_steps",
    "launch",
    "save_every_minutes",
    "segment_minutes",
    "requeue",
    "ddp_timeout",
)


def train(
    base_model: str,
    examples: Sequence[Mapping[str, str]],
    output_dir: str,
    settings: dict[str, Any],
    loss_csv: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    max_steps: int | None = None,
    save_steps: int = 200,
    keep_run_dir: bool = False,
    lengths_file: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on ``examples`` ({prompt, response}) and save to ``output_dir``.

    Intermediate checkpoints live in ``<output_dir>.run/``; rerunning after a kill resumes from
    the last one. The finished model appears at ``output_dir`` atomically (rename of a temp dir).
    ``lengths_file``: token lengths prepared by a CPU job (``sft --prepare``); computed here when absent
    or made from other data.
    """
    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class _Trainer(Trainer):
        """Length-grouped batches from the lengths already known (the stock sampler would tokenize
        the whole set once more to learn them, as ``TokenizedExamples`` is not a ``datasets.Dataset``)."""

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, TokenizedExamples):
                batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
                return LengthGroupedSampler(batch, lengths=dataset.lengths)
            return super()._get_train_sampler(train_dataset)

    require_cuda(f"training {output_dir}", settings)
    check_kernels(settings, f"training {output_dir}")
    clock = SegmentClock(settings.get("save_every_minutes"), settings.get("segment_minutes"))

    class _Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end(control)

        def on_save(self, args, state, control, **kwargs):
            clock.saved()

    trust = bool(settings.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cutoff = int(settings["cutoff"])
    run_dir = Path(f"{output_dir}.run")
    use_cuda = torch.cuda.is_available()
    packing = bool(settings.get("packing", False))
    bf16 = bool(settings.get("bf16", False))
    # group_by_length: batches of similar length (padding makes CPU steps 3-7x slower); the reference's
    # DiffGen run samples at random (config: false).
    grouped = bool(settings.get("group_by_length", True))
    if settings.get("deepspeed"):
        single_process_rendezvous()
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
        bf16=bf16,
        seed=int(settings.get("seed", 42)),
        data_seed=int(settings.get("seed", 42)),
        use_cpu=not use_cuda,
        deepspeed=settings.get("deepspeed") or None,
        train_sampling_strategy="group_by_length" if grouped else "random",
        gradient_checkpointing=bool(settings.get("gradient_checkpointing", False)),
        gradient_checkpointing_kwargs={"use_reentrant": False},  # as the reference (LLaMA-Factory)
        use_liger_kernel=bool(settings.get("liger_kernel", False)),
        ddp_timeout=int(settings.get("ddp_timeout", 180000000)),  # the reference's: no rank times out waiting
        logging_steps=int(settings.get("logging_steps", 5)),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        report_to=[],
        disable_tqdm=not bool(settings.get("progress", True)),
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    # One tokenization pass for the lengths (rank 0 first, cached for the other ranks and for resumes);
    # the token ids themselves are produced batch by batch while training.
    model_id, data_id = source_identity(base_model), examples_fingerprint(examples)
    lengths_path = Path(lengths_file) if lengths_file else run_dir / "token_lengths.npz"
    with args.main_process_first(desc="token lengths"):
        prompt_len, response_len = cached_lengths(
            lengths_path, tokenizer, examples, Fingerprint(tokenizer=model_id, examples=data_id)
        )
    usable = (response_len > 0) & (prompt_len < cutoff)
    lengths = np.minimum(prompt_len + response_len, cutoff)
    kept = np.flatnonzero(usable)
    if not len(kept):
        raise ValueError(f"no trainable examples for {output_dir} ({len(examples)} given)")
    n_truncated = int(np.count_nonzero(usable & (prompt_len + response_len >= cutoff)))
    log.info(
        "training examples: %d in, %d usable, %d truncated at %d tokens", len(examples), len(kept), n_truncated, cutoff
    )
    if packing:
        groups = [[int(kept[j]) for j in g] for g in pack_groups(lengths[kept].tolist(), cutoff)]
        log.info("packed into %d rows of <= %d tokens", len(groups), cutoff)
    else:
        groups = [[int(i)] for i in kept]
    dataset = TokenizedExamples(
        examples, tokenizer, cutoff, groups, [int(lengths[g].sum()) for g in groups], packed=packing
    )

    # flash_attention_2 takes a packed row's restarting position_ids as separate sequences (varlen
    # kernels, no mask); sdpa/eager build its block-diagonal (tokens x tokens) mask.
    attn = settings.get("attn_implementation")
    # bf16 weights only under DeepSpeed, whose optimizer keeps fp32 master weights; the plain Trainer
    # would step bf16 parameters (its bf16 is autocast over fp32 weights).
    model = load_model(
        base_model, config_overrides, trust, attn_implementation=attn, bf16=bf16 and bool(settings.get("deepspeed"))
    )
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=FlatCollator()
        if packing
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE),
        callbacks=[_Clock()],
    )
    made_by = Fingerprint(
        model=model_id,
        config_overrides=config_overrides or {},
        settings={k: v for k, v in settings.items() if k not in NOT_IN_FINGERPRINT} | {"max_steps": max_steps},
        world_size=args.world_size,
        examples=data_id,
    )
    with args.main_process_first(local=False, desc="checkpoints"):
        resume = _last_checkpoint(run_dir, made_by)
    if resume:
        log.info("resuming from %s", resume)
    # An engine loaded earlier in the same process (vLLM) may have switched autograd off globally.
    # Signal handlers can only be set from the main thread (a caller's worker thread trains without).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGUSR1, clock.on_signal) if in_main else None
    try:
        with torch.enable_grad():
            result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if in_main:
            signal.signal(signal.SIGUSR1, previous)
    history = trainer.state.log_history
    if clock.ended and trainer.state.global_step < trainer.state.max_steps:
        end_segment(run_dir, trainer.state.global_step, bool(settings.get("requeue", True)))

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
        "examples_used": len(kept),
        "packed_rows": len(groups) if packing else None,
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
