import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ENGINE, build_tiny, train_constant

from scalediff import answers, evaluate

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "config/data/benchmarks").glob("*.jsonl"))
WRONG = "-987654321"


def eval_style(answer: str) -> str:
    return f"Step by step... Therefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_reference_answers_score_correct(path):
    rows = read_jsonl(path)
    assert rows
    right = [r["id"] for r in rows if not evaluate.score_with_metric(eval_style(r["answer"]), r["answer"])]
    wrong = [r["id"] for r in rows if evaluate.score_with_metric(eval_style(WRONG), r["answer"])]
    assert right == [], f"reference answers scored wrong: {right[:10]}"
    assert wrong == [], f"a wrong answer scored right: {wrong[:10]}"


def test_gold_is_wrapped_before_parsing():
    # Raw `2^{99}` parses as 2 (SPEC §6); the pipeline's metric must not accept \boxed{2}.
    assert not evaluate.score_with_metric(eval_style("2"), "2^{99}")
    assert evaluate.score_with_metric(eval_style("2^{99}"), "2^{99}")
    assert evaluate.score_with_metric(eval_style("0.5"), "\\frac{1}{2}")


def test_reasoning_tags():
    gold = "\\frac{1}{2}"
    # Drafts inside a closed think block are ignored, in both directions.
    assert evaluate.score_with_metric(f"<think>maybe \\boxed{{{WRONG}}}</think>" + eval_style(gold), gold)
    assert not evaluate.score_with_metric(f"<think>{eval_style(gold)}</think>" + eval_style(WRONG), gold)
    # Only an opening tag (truncated reasoning): nothing is stripped, the box still counts.
    assert evaluate.score_with_metric("<think>so " + eval_style(gold), gold)
    # Stripping off (eval.remove_reasoning_tags: false): a box drafted in the reasoning counts.
    assert evaluate.score_with_metric(f"<think>so \\boxed{{{gold}}}</think>no answer", gold, remove_reasoning=False)
    assert not evaluate.score_with_metric(f"<think>so \\boxed{{{gold}}}</think>no answer", gold)


def test_metric_agrees_with_answers_module():
    # The eval metric and the filter stage's checker must judge the same pairs the same way.
    cases = [("2", "2^{99}"), ("2^{99}", "2^{99}"), ("0.5", "\\frac{1}{2}"), ("3", "4"), ("\\sqrt{2}", "2^{1/2}")]
    for pred, gold in cases:
        assert evaluate.score_with_metric(eval_style(pred), gold) == answers.score_prediction(eval_style(pred), gold)


def test_summarize_from_rows():
    rows = [
        {"id": "a", "seed": 0, "correct": True},
        {"id": "b", "seed": 0, "correct": False},
        {"id": "a", "seed": 1, "correct": True},
        {"id": "b", "seed": 1, "correct": True},
    ]
    out = evaluate.summarize("m", "b", [0, 1], rows)
    assert out["per_seed"] == [50.0, 100.0]
    assert out["mean"] == 75.0
    assert out["std"] == 25.0 and out["std_kind"] == "population"
    assert out["n_problems"] == 2


# ---------------------------------------------------------------- end to end (vLLM, tiny model)
INSTRUCTION = "Solve the following math problem efficiently and clearly.  Think step by step before answering.\n\n"
SETTINGS = {
    "engine": ENGINE,
    "eval": {"instruction": INSTRUCTION, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32},
}
DETAIL_COLUMNS = {"id", "seed", "prompt", "completion", "finish_reason", "gold", "prediction", "correct"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from scalediff import tiny

    corpus = tiny.read_corpus([str(ROOT / "config/data/pool/math_train.jsonl")])[:300]
    tokenizer = tiny.build_tokenizer(corpus, 800, "qwen3")
    spec = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
    }
    model = tiny.build_model("qwen3", tokenizer, spec, seed=0)
    out = tmp_path_factory.mktemp("tiny_eval_model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def run_cli(
    model_dir: str, out_dir: Path, data: Path, seeds: int, limit: int, settings: dict = SETTINGS
) -> tuple[dict, list[dict]]:
    """The eval stage's entry point exactly as rules/eval.smk calls it."""
    output, details = out_dir / "scores.json", out_dir / "details.parquet"
    cmd = [sys.executable, "-m", "scalediff.evaluate", "--model", model_dir, "--model-name", "tiny"]
    cmd += ["--benchmark", "aime24", "--data", str(data), "--seeds", str(seeds), "--limit", str(limit)]
    cmd += ["--output", str(output), "--details", str(details), "--settings", json.dumps(settings)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (out_dir / "eval.log").write_text(proc.stderr)
    return json.loads(output.read_text()), pq.read_table(details).to_pylist()


@pytest.mark.slow
def test_cli_end_to_end(tiny_model_dir, tmp_path):
    data = ROOT / "config/data/benchmarks/aime24.jsonl"
    first3 = read_jsonl(data)[:3]
    summary, rows = run_cli(tiny_model_dir, tmp_path / "a", data, seeds=2, limit=3)

    assert summary["model"] == "tiny" and summary["benchmark"] == "aime24"
    assert summary["n_problems"] == 3
    assert summary["seeds"] == [0, 1]
    assert len(summary["per_seed"]) == 2
    assert summary["std_kind"] in {"population", "sample"}

    assert len(rows) == 6
    assert DETAIL_COLUMNS <= set(rows[0])
    assert {(r["seed"], r["id"]) for r in rows} == {(s, p["id"]) for s in (0, 1) for p in first3}
    gold = {p["id"]: p["answer"] for p in first3}
    for r in rows:
        assert r["gold"] == gold[r["id"]]
        assert r["prompt"].count(INSTRUCTION) == 1 and r["prompt"].endswith("<|im_start|>assistant\n")
        assert "system" not in r["prompt"]
        assert r["finish_reason"] in {"stop", "length"}
        assert 0 < r["completion_tokens"] <= 32
    # Scores are recomputable from the details.
    for seed, acc in zip(summary["seeds"], summary["per_seed"], strict=True):
        seed_rows = [r for r in rows if r["seed"] == seed]
        assert acc == pytest.approx(100.0 * sum(r["correct"] for r in seed_rows) / len(seed_rows))
    assert summary["mean"] == pytest.approx(sum(summary["per_seed"]) / 2)
    # Every seed's completions come from one engine call (no per-seed long tail).
    calls = re.findall(r"generated (\d+) completions .* in one call", (tmp_path / "a" / "eval.log").read_text())
    assert calls == ["6"]
    # Different seeds sample differently.
    by_seed = {s: [r["completion"] for r in rows if r["seed"] == s] for s in (0, 1)}
    assert by_seed[0] != by_seed[1]

    # Per-problem seeds: a smaller run reproduces the same completions for the same (seed, id).
    _, rows2 = run_cli(tiny_model_dir, tmp_path / "b", data, seeds=1, limit=2)
    again = {r["id"]: r["completion"] for r in rows2}
    assert again == {r["id"]: r["completion"] for r in rows if r["seed"] == 0 and r["id"] in again}
    assert len(again) == 2


# ------------------------------------------- scoring a known answer (tiny models that always answer the same)
GOLD, DRAFT = "42", "17"
BENCH_PROBLEMS = ["What is six times seven?", "Compute forty plus two.", "How many ways can 42 be reached?"]
# What each model always answers (the engine drops the final <|im_end|>): a box drafted inside the
# reasoning, then the final answer after it.
THINK = "<think>\nFirst guess \\boxed{{{}}}, check it.\n</think>\n\n"
ANSWERS = {
    "draft_wrong_final_gold": THINK.format(DRAFT) + f"The answer is \\boxed{{{GOLD}}}.",
    "draft_gold_final_wrong": THINK.format(GOLD) + f"The answer is \\boxed{{{DRAFT}}}.",
    "draft_gold_no_final": THINK.format(GOLD) + "No answer.",
}


@pytest.fixture(scope="session")
def answering_model(tmp_path_factory):
    """``answering_model(name)``: a tiny Qwen3-template model that answers ``ANSWERS[name]`` to every
    eval prompt (trained until it does, checked on the benchmark's own prompts: conftest.train_constant)."""
    from scalediff.tiny import read_corpus

    root = tmp_path_factory.mktemp("answering")
    base = build_tiny(root / "base")
    problems = [r["problem"] for r in read_corpus([str(ROOT / "config/data/pool/math_train.jsonl")])[::40]]
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = train_constant(
                base,
                root / name,
                ANSWERS[name] + "<|im_end|>",
                prompts=[INSTRUCTION + p for p in problems],
                check_prompts=[INSTRUCTION + p for p in BENCH_PROBLEMS],
            )
        return built[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,strip,accuracy",
    [
        ("draft_wrong_final_gold", True, 100.0),  # the answer after the reasoning is scored ...
        ("draft_gold_final_wrong", True, 0.0),  # ... and a right draft inside it is not (boxes swapped)
        ("draft_gold_no_final", True, 0.0),
        ("draft_gold_no_final", False, 100.0),  # eval.remove_reasoning_tags: false scores the whole text
        ("draft_gold_final_wrong", False, 0.0),  # the last box still wins
    ],
)
def test_eval_scores_the_answer_after_the_reasoning(answering_model, tmp_path, model, strip, accuracy):
    data = tmp_path / "bench.jsonl"  # every gold answer is GOLD
    data.write_text(
        "".join(json.dumps({"id": f"p{i}", "problem": p, "answer": GOLD}) + "\n" for i, p in enumerate(BENCH_PROBLEMS))
    )
    settings = {
        "engine": ENGINE,
        "eval": {**SETTINGS["eval"], "max_new_tokens": 64, "remove_reasoning_tags": strip},
    }
    summary, rows = run_cli(str(answering_model(model)), tmp_path / "out", data, seeds=1, limit=10, settings=settings)
    assert [r["completion"] for r in rows] == [ANSWERS[model]] * len(BENCH_PROBLEMS)  # the model did as trained
    assert summary["per_seed"] == [accuracy] and summary["mean"] == accuracy
    assert summary["remove_reasoning_tags"] is strip
    assert all(r["correct"] is (accuracy == 100.0) for r in rows)
