"""The one trainer really learns: a tiny model overfits a handful of examples, then generates them."""

import csv
import json
import multiprocessing as mp
import os
import queue as queue_module
from collections.abc import Sequence

import pytest
from conftest import ENGINE, build_tiny

from scalediff.train import IGNORE, tokenize_pair

FACTS = [
    "Find the number of positive divisors of 2024.",
    "Let x be a real number with x^2 = 49. Find x.",
    "How many ways can 5 books be arranged on a shelf?",
    "Compute the sum of the first 100 positive integers.",
]


def test_prompt_tokens_are_masked_and_cutoff_applies():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    ex = tokenize_pair(Tok(), "ab", "cde", cutoff=4)
    assert ex["input_ids"] == [97, 98, 99, 100]
    assert ex["labels"] == [IGNORE, IGNORE, 99, 100]
    assert tokenize_pair(Tok(), "abcd", "e", cutoff=4) is None  # nothing left to learn


def _generate(model_dir, queue):
    from scalediff.engine import Engine

    engine = Engine(str(model_dir), ENGINE, seed=0)
    prompt = engine.encode("<|im_start|>user\n")
    outs = engine.generate(
        [prompt] * 8, {"temperature": 1.0, "max_tokens": 64, "stop": ["<|im_end|>"]}, seeds=list(range(8))
    )
    queue.put([o[0].text.strip() for o in outs])


@pytest.mark.slow
def test_qft_overfits_and_generates_its_training_problems(tmp_path):
    from scalediff.train import train

    base = build_tiny(tmp_path / "base")
    examples = [{"prompt": "<|im_start|>user\n", "response": f + "<|im_end|>\n"} for f in FACTS] * 8
    settings = {
        "lr": 5e-3,
        "scheduler": "constant",
        "per_device_batch_size": 8,
        "cutoff": 128,
        "seed": 0,
        "epochs": 1,
        "progress": False,
        "logging_steps": 5,
    }
    stats = train(
        str(base), examples, str(tmp_path / "model"), settings, loss_csv=str(tmp_path / "loss.csv"), max_steps=150
    )
    with open(tmp_path / "loss.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert losses[0] > 4.0 and losses[-1] < 0.2 * losses[0], losses
    assert stats["steps"] == 150
    # Sampled at T=1 the overfit generator reproduces its training problems (vLLM in a subprocess).
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_generate, args=(tmp_path / "model", queue))
    proc.start()
    try:
        texts = queue.get(timeout=600)
    except queue_module.Empty:
        proc.kill()
        pytest.fail(f"the generating subprocess sent nothing in 600 s (exit code {proc.exitcode})")
    proc.join(timeout=120)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the generating subprocess did not exit within 120 s of sending its texts")
    assert proc.exitcode == 0, f"the generating subprocess exited with {proc.exitcode}"
    assert sum(t in FACTS for t in texts) >= 6, texts


class KilledAfterCheckpoint(Sequence):
    """Training examples whose run dies right after saving ``checkpoint-<step>``: what a job killed
    there leaves behind (the trainer fetches the next batch only once the save is complete)."""

    def __init__(self, examples, run_dir, step):
        self.examples, self.checkpoint = examples, run_dir / f"checkpoint-{step}"

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        if self.checkpoint.is_dir():
            raise RuntimeError("killed")
        return self.examples[i]


RESUME_SETTINGS = {
    "lr": 5e-3,
    "scheduler": "linear",
    "per_device_batch_size": 4,
    "cutoff": 128,
    "seed": 0,
    "epochs": 1,
    "progress": False,
    "logging_steps": 1,
}


def _killed_run(base, examples, out, settings):
    """A 12-step run killed right after its step-6 checkpoint: ``<out>.run/checkpoint-6`` is left."""
    from scalediff.train import train

    run_dir = out.with_name(out.name + ".run")
    with pytest.raises(RuntimeError, match="killed"):
        train(str(base), KilledAfterCheckpoint(examples, run_dir, 6), str(out), settings, max_steps=12, save_steps=6)
    assert (run_dir / "checkpoint-6").is_dir() and not out.exists()
    return run_dir


@pytest.mark.slow
def test_training_resumes_from_its_last_checkpoint(tmp_path, caplog):
    """A killed run's checkpoint is picked up by the rerun with the same data and settings: it continues
    from step 6 (the log says so), and its loss curve starts with the steps logged before the kill."""
    from transformers import AutoModelForCausalLM

    from scalediff.train import train

    base = build_tiny(tmp_path / "base")
    examples = [{"prompt": "<|im_start|>user\n", "response": f + "<|im_end|>\n"} for f in FACTS] * 4
    run_dir = _killed_run(base, examples, tmp_path / "model", RESUME_SETTINGS)
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    before = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(before) == 6
    with caplog.at_level("INFO", logger="scalediff"):
        stats = train(
            str(base),
            examples,
            str(tmp_path / "model"),
            RESUME_SETTINGS,
            loss_csv=str(tmp_path / "loss.csv"),
            max_steps=12,
            save_steps=6,
        )
    assert stats["resumed_from"] == str(run_dir / "checkpoint-6")
    assert f"resuming from {run_dir / 'checkpoint-6'}" in caplog.text and "discarding" not in caplog.text
    assert stats["steps"] == 12
    with open(tmp_path / "loss.csv") as fh:
        curve = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]
    assert [s for s, _ in curve] == list(range(1, 13))
    assert [loss for _, loss in curve[:6]] == pytest.approx(before, rel=1e-6)
    assert not run_dir.exists()  # cleaned once the model is in place
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")


@pytest.mark.slow
@pytest.mark.parametrize("change", ["examples", "settings", "config_overrides"])
def test_a_checkpoint_from_other_data_or_settings_is_not_resumed(tmp_path, caplog, change):
    from scalediff.train import train

    base = build_tiny(tmp_path / "base")
    examples = [{"prompt": "<|im_start|>user\n", "response": f + "<|im_end|>\n"} for f in FACTS] * 4
    run_dir = _killed_run(base, examples, tmp_path / "model", RESUME_SETTINGS)
    settings, overrides = RESUME_SETTINGS, None
    if change == "examples":
        examples = [*examples[:-1], {"prompt": "<|im_start|>user\n", "response": "Find y.<|im_end|>\n"}]
    elif change == "settings":
        settings = {**RESUME_SETTINGS, "lr": 1e-3}
    else:
        overrides = {"rope_theta": 20000.0}
    with caplog.at_level("INFO", logger="scalediff"):
        stats = train(
            str(base),
            examples,
            str(tmp_path / "model"),
            settings,
            config_overrides=overrides,
            max_steps=12,
            save_steps=100,
            keep_run_dir=True,
        )
    assert stats["resumed_from"] is None and stats["steps"] == 12
    assert f"discarding training checkpoints in {run_dir} (not resuming): {change} changed" in caplog.text
    assert "resuming from" not in caplog.text
    assert not list(run_dir.glob("checkpoint-6"))  # gone, so a later resume cannot pick it up


def test_sft_cache_is_rebuilt_when_its_inputs_change(tmp_path, caplog):
    """The memory-mapped Arrow cache of the SFT set is reused only for the same input files."""
    from scalediff.records import PROBLEM_SCHEMA, write_rows
    from scalediff.sft import DatasetExamples

    def write(solution):
        row = {"id": "1", "problem": "Find x.", "solution": solution, "answer": None, "origin": "original"}
        write_rows([{**row, "source": "t"}], tmp_path / "data.parquet", PROBLEM_SCHEMA)

    cache = tmp_path / "model.run" / "datasets"
    write("x = 1")
    first = DatasetExamples([str(tmp_path / "data.parquet")], str(cache))
    assert first[0]["response"].startswith("x = 1")
    arrow = cache / "examples.arrow"
    built = arrow.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="scalediff"):
        again = DatasetExamples([str(tmp_path / "data.parquet")], str(cache))
    assert arrow.stat().st_mtime_ns == built and "discarding" not in caplog.text  # same inputs: reused

    write("x = 2")  # the filter stage reran: same path, new data
    with caplog.at_level("INFO", logger="scalediff"):
        changed = DatasetExamples([str(tmp_path / "data.parquet")], str(cache))
    assert changed[0]["response"].startswith("x = 2")
    assert f"discarding SFT cache {arrow}: inputs changed" in caplog.text
    from scalediff.train import examples_fingerprint

    # the training set's identity follows: training resumes on the same inputs only
    assert examples_fingerprint(again) == examples_fingerprint(first) != examples_fingerprint(changed)


def test_packing_fills_rows_without_exceeding_the_cutoff():
    from scalediff.train import pack

    examples = [{"input_ids": [1] * n, "labels": [IGNORE] + [5] * (n - 1)} for n in (7, 5, 4, 3, 1)]
    rows = pack(examples, cutoff=8)
    assert sorted(len(r["input_ids"]) for r in rows) == [4, 8, 8]
    assert sum(len(r["input_ids"]) for r in rows) == 20
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert all(r["labels"][i] == IGNORE for i in starts)  # no loss across an example boundary


@pytest.mark.slow
def test_packed_examples_do_not_attend_to_each_other(tmp_path):
    """Loss of a packed row == sum of the examples' losses alone (block-diagonal attention)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scalediff.train import FlatCollator, pack

    path = build_tiny(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    examples = [tokenize_pair(tok, "<|im_start|>user\n", f + "<|im_end|>\n", 256) for f in FACTS]

    def summed_loss(batch):
        with torch.no_grad():
            out = model(**batch)
        return out.loss.item() * int((batch["labels"][0, 1:] != IGNORE).sum())

    alone = sum(
        summed_loss({"input_ids": torch.tensor([e["input_ids"]]), "labels": torch.tensor([e["labels"]])})
        for e in examples
    )
    rows = pack(examples, cutoff=1024)
    assert len(rows) == 1
    packed = summed_loss(FlatCollator()(rows))
    assert packed == pytest.approx(alone, rel=1e-6)
    # The same tokens without restarting positions attend across examples: a different loss.
    leaky = FlatCollator()(rows)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    assert leaky["use_cache"] is False
    assert summed_loss(leaky) != pytest.approx(alone, rel=1e-5)


@pytest.mark.slow
def test_sft_under_torchrun_with_two_workers(tmp_path):
    """The multi-GPU launch path (torchrun, one worker per device) on CPU with the gloo backend."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from scalediff.records import read_rows, write_rows

    base = build_tiny(tmp_path / "base")
    rows = [
        {
            "problem": f"What is {i}+{i}?",
            "solution": f"<think>\nadd\n</think>\n\n$\\boxed{{{2 * i}}}$",
            "answer": str(2 * i),
            "id": str(i),
            "origin": "original",
            "source": "t",
        }
        for i in range(64)
    ]
    write_rows(rows, tmp_path / "data.parquet")
    settings = {
        "sft": {
            "epochs": 1,
            "lr": 1e-3,
            "scheduler": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "per_device_batch_size": 2,
            "grad_accum": 1,
            "cutoff": 128,
            "bf16": False,
            "seed": 0,
            "packing": True,
            "progress": False,
            "logging_steps": 1,
        }
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "scalediff.sft",
            "--data",
            str(tmp_path / "data.parquet"),
            "--base-model",
            str(base),
            "--output",
            str(tmp_path / "model"),
            "--loss-csv",
            str(tmp_path / "loss.csv"),
            "--summary",
            str(tmp_path / "summary.json"),
            "--settings",
            json.dumps(settings),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Two workers split the packed rows: half the optimizer steps of one worker with the same batch.
    assert summary["examples_used"] == 64
    assert summary["steps"] == -(-summary["packed_rows"] // 4)
    assert (tmp_path / "model" / "config.json").exists() and not (tmp_path / "model.tmp").exists()
    assert read_rows(tmp_path / "data.parquet")  # inputs untouched


def test_pack_groups_is_a_valid_tight_packing():
    """Every example in exactly one row, no row over the cutoff, and no more rows than first-fit."""
    import random

    from scalediff.train import pack_groups

    rng = random.Random(3)
    for cutoff in (8, 64, 1024):
        lengths = [rng.randint(1, cutoff) for _ in range(2000)]
        groups = pack_groups(lengths, cutoff)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in g) <= cutoff for g in groups)
        room: list[int] = []  # first-fit decreasing, the textbook reference
        for n in sorted(lengths, reverse=True):
            slot = next((k for k, free in enumerate(room) if free >= n), None)
            if slot is None:
                room.append(cutoff - n)
            else:
                room[slot] -= n
        assert len(groups) <= len(room)
        assert len(groups) >= -(-sum(lengths) // cutoff)


def test_token_lengths_match_the_tokenization_used_in_training(tmp_path):
    """The one batched length pass (Rust fast path) counts exactly what ``tokenize_pair`` produces, so
    packing and truncation counts agree with the rows actually trained on."""
    from transformers import AutoTokenizer

    from scalediff.train import token_lengths

    tok = AutoTokenizer.from_pretrained(build_tiny(tmp_path / "m"))
    examples = [
        {"prompt": "<|im_start|>user\n" + f + "<|im_end|>\n<|im_start|>assistant\n", "response": f * 3 + "<|im_end|>"}
        for f in FACTS
    ] + [{"prompt": "", "response": "<think>\n\n</think>\n\n$\\boxed{7}$<|im_end|>"}, {"prompt": "x", "response": ""}]
    prompt, response = token_lengths(tok, examples, batch=3)

    def n(text):
        return len(tok.encode(text, add_special_tokens=False)) if text else 0

    assert prompt.tolist() == [n(e["prompt"]) for e in examples]
    assert response.tolist() == [n(e["response"]) for e in examples]
    assert prompt[0] > 5 and response[-1] == 0 and prompt[-2] == 0
    pair = tokenize_pair(tok, examples[0]["prompt"], examples[0]["response"], cutoff=10_000)
    assert len(pair["input_ids"]) == prompt[0] + response[0]


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    """Non-reentrant activation recomputation changes memory, not the training: the same packed run with
    and without it logs the same losses step by step (and checkpointing really is switched on)."""
    from scalediff.train import train

    base = build_tiny(tmp_path / "base")
    examples = [{"prompt": "<|im_start|>user\n", "response": f + "<|im_end|>\n"} for f in FACTS] * 4
    curves = {}
    for gc in (False, True):
        settings = {**RESUME_SETTINGS, "packing": True, "gradient_checkpointing": gc, "attn_implementation": "sdpa"}
        train(
            str(base), examples, str(tmp_path / f"gc-{gc}"), settings, loss_csv=str(tmp_path / f"{gc}.csv"), max_steps=4
        )
        with open(tmp_path / f"{gc}.csv") as fh:
            curves[gc] = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(curves[True]) == 4
    assert curves[True] == pytest.approx(curves[False], rel=1e-5)


@pytest.mark.slow
def test_gradient_checkpointing_is_on_in_the_trained_model(tmp_path, monkeypatch):
    """The setting reaches the model: the Trainer enables (non-reentrant) checkpointing on it."""
    import transformers

    from scalediff.train import train

    seen = {}
    original = transformers.PreTrainedModel.gradient_checkpointing_enable

    def spy(self, gradient_checkpointing_kwargs=None, **kwargs):  # records, then the real method runs
        original(self, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)
        seen["kwargs"], seen["on"] = gradient_checkpointing_kwargs, self.is_gradient_checkpointing

    monkeypatch.setattr(transformers.PreTrainedModel, "gradient_checkpointing_enable", spy)
    base = build_tiny(tmp_path / "base")
    examples = [{"prompt": "<|im_start|>user\n", "response": f + "<|im_end|>\n"} for f in FACTS]
    settings = {**RESUME_SETTINGS, "gradient_checkpointing": True}
    train(str(base), examples, str(tmp_path / "model"), settings, max_steps=1)
    assert seen == {"kwargs": {"use_reentrant": False}, "on": True}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("attn_implementation", "flash_attention_2", "flash_attention_2 needs"),
        ("liger_kernel", True, "liger-kernel package is not installed"),
    ],
)
def test_kernels_this_machine_cannot_run_fail_at_start(tmp_path, key, value, message):
    """Requested GPU kernels without their package (or without CUDA) stop the run before any work."""
    import importlib.util

    from scalediff.train import train

    if key == "liger_kernel" and importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(RuntimeError, match=message):
        train("/nonexistent-model", [], str(tmp_path / "model"), {**RESUME_SETTINGS, key: value})


@pytest.mark.slow
def test_deepspeed_zero2_trains_in_one_process_that_no_launcher_started(tmp_path):
    """One GPU (or the CPU rehearsal) starts training as a plain process: DeepSpeed then needs a
    torch.distributed rendezvous it cannot discover (it fell back to MPI and died on a missing mpi4py).
    The repo's ZeRO-2 config with bf16 trains, and the saved weights moved."""
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    base = build_tiny(tmp_path / "base")
    zero2 = Path(__file__).resolve().parents[1] / "config" / "deepspeed" / "zero2.json"
    settings = {**RESUME_SETTINGS, "deepspeed": str(zero2), "bf16": True}
    examples = [{"prompt": "<|im_start|>user\n", "response": f + "<|im_end|>\n"} for f in FACTS] * 4
    script = (
        "import json, logging, sys; logging.basicConfig(level=logging.INFO)\n"
        "from scalediff.train import train\n"
        "train(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), loss_csv=sys.argv[5],"
        " max_steps=3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    args = [str(base), json.dumps(examples), str(tmp_path / "model"), json.dumps(settings), str(tmp_path / "loss.csv")]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rendezvous on 127.0.0.1" in proc.stderr
    with open(tmp_path / "loss.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 3 and all(0 < x < 100 for x in losses)
    before = AutoModelForCausalLM.from_pretrained(base).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)
