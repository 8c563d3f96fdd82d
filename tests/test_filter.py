"""filter stage: every rule filter and reason code, decontamination, dedup, accounting, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ENGINE

from scalediff import filter as flt
from scalediff.decontam import BenchmarkIndex
from scalediff.dedup import dedup_problems, exact_key
from scalediff.filter_rules import (
    REQUIRED_SOLUTION_FIELDS,
    count_questions,
    foreign_letter_fraction,
    gold_mismatch,
    problem_reasons,
    repeated_ngram_ratio,
    solution_reasons,
    validate_row,
    with_defaults,
)

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "config" / "data" / "benchmarks"
CFG = with_defaults({})
GOOD = (
    "<think>\nAdd the two numbers: two plus three gives five, checked twice.\n</think>\n\n"
    "The final answer is $\\boxed{5}$."
)


def sol(
    pid: str, problem: str = "What is the sum of two and three, written as an integer?", completion: str = GOOD, **kw
) -> dict:
    row = {
        "id": pid,
        "sample": 0,
        "problem": problem,
        "origin": "generated",
        "source": "gen-0",
        "completion": completion,
        "finish_reason": "stop",
        "prompt_tokens": 20,
        "completion_tokens": 40,
        "answer": None,
    }
    row.update(kw)
    return row


def reasons(**kw) -> list[str]:
    return solution_reasons(sol("g-1", **kw), CFG)[0]


# ----------------------------------------------------------------------------- solution rules
def test_good_solution_passes():
    assert solution_reasons(sol("g-1"), CFG) == ([], "5")


def test_truncated():
    assert "truncated" in reasons(finish_reason="length")
    assert "truncated" in reasons(completion="<think>\nstill thinking about it and never stopping " * 3)
    assert (
        "truncated"
        not in solution_reasons(sol("g-1", completion="So $\\boxed{5}$."), {**CFG, "require_think_close": False})[0]
    )


def test_no_boxed_and_box_only_in_reasoning():
    assert "no_boxed" in reasons(completion="<think>\nmaybe \\boxed{5}\n</think>\n\nThe answer is 5.")
    assert "no_boxed" in reasons(completion="<think>\nx\n</think>\n\nSo \\boxed{}")


def test_boxed_disagree_vs_agree():
    assert "boxed_disagree" in reasons(completion="<think>\nok\n</think>\n\n$\\boxed{5}$ or maybe $\\boxed{6}$")
    agree = "<think>\nok\n</think>\n\n$\\boxed{\\frac12}$, i.e. $\\boxed{0.5}$"
    assert "boxed_disagree" not in reasons(completion=agree)


def test_unparsable_answer():
    assert "unparsable_answer" in reasons(completion="<think>\nok\n</think>\n\n$\\boxed{???}$")
    assert "unparsable_answer" in reasons(completion="<think>\nok\n</think>\n\n$\\boxed{\\text{}}$")
    assert "unparsable_answer" not in reasons(completion="<think>\nok\n</think>\n\n$\\boxed{(1, \\sqrt{2})}$")


def test_length_bounds():
    cfg = {**CFG, "min_solution_tokens": 10, "max_solution_tokens": 100}
    assert "too_short" in solution_reasons(sol("g", completion_tokens=9), cfg)[0]
    assert "too_long" in solution_reasons(sol("g", completion_tokens=101), cfg)[0]
    assert solution_reasons(sol("g", completion_tokens=100), cfg)[0] == []


def test_repetition_loop():
    loop = "<think>\n" + "Wait, let me recompute the value of x from the start again. " * 30
    loop += "\n</think>\n\n$\\boxed{5}$"
    ratio, n = repeated_ngram_ratio(loop, 8)
    assert ratio > 0.8 and n > 100
    assert "repetition" in reasons(completion=loop)
    prose = " ".join(f"step {i} multiplies term {i} by {i + 1} and adds {2 * i}" for i in range(40))
    assert repeated_ngram_ratio(prose, 8)[0] < 0.5


def test_repeated_ngram_ratio_is_the_exact_share_of_repeated_word_ngrams():
    """The hashed/numpy count equals the definition (distinct word-tuple n-grams) on ASCII text (the
    translate fast path) and Unicode text (the regex path) alike, punctuation and underscores included."""
    import random
    import re
    from collections import Counter

    def reference(text: str, n: int) -> tuple[float, int]:
        toks = re.findall(r"[^\W_]+", text.lower())
        total = len(toks) - n + 1
        return (
            (0.0, 0)
            if total <= 0
            else (1.0 - len(Counter(tuple(toks[i : i + n]) for i in range(total))) / total, total)
        )

    rng = random.Random(7)
    pieces = ["x", "Y", "42", "a_b", "wait", "LET", "é", "α", "中文", "x²", "\\frac{1}{2}", "$", ",", ".", "--"]
    for trial in range(300):
        base = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        text = base + rng.choice([" ", "\n", "; "]).join([base[: rng.randint(0, len(base))]] * rng.randint(1, 6))
        if trial % 2:
            text = text.encode("ascii", "ignore").decode()
        for n in (1, 3, 8):
            assert repeated_ngram_ratio(text, n) == pytest.approx(reference(text, n), abs=1e-12), (text, n)


def test_non_english_and_mixed_script():
    assert foreign_letter_fraction("Let α, β ∈ ℝ and 𝐱 = (x₁, x₂); café") == 0.0
    assert foreign_letter_fraction("Найдите x") > 0.5
    mixed = "<think>\nWe add the numbers carefully. 所以答案是五。 Done.\n</think>\n\n$\\boxed{5}$"
    assert "solution_non_english" in reasons(completion=mixed)
    assert "problem_non_english" in problem_reasons("Найдите сумму двух и трёх чисел.", CFG)


# ----------------------------------------------------------------------------- problem rules
def test_problem_rules():
    assert problem_reasons("   ", CFG) == ["problem_empty"]
    assert problem_reasons("Find x.", CFG) == ["problem_empty"]  # shorter than min_chars
    assert "problem_is_solution" in problem_reasons("Find $x$ if $2x=4$. We get $x=\\boxed{2}$.", CFG)
    assert "problem_is_solution" in problem_reasons("Compute 2+2. Thus, the answer is 4.", CFG)
    assert "problem_multi_question" in problem_reasons("Let $f(x)=x^2$. Find $f(2)$. Also, what is $f(3)$?", CFG)
    assert "problem_multi_question" in problem_reasons("Let $x=2$. (a) Find $x^2$. (b) Prove that $x$ is even.", CFG)
    assert "problem_multi_question" in problem_reasons("What is $f(1)$? What is $f(2)$?", CFG)
    # Real single problems (from MATH/AIME) are not flagged.
    for ok in [
        "Find the largest integer $n$ satisfying the following conditions: (i) $n^2$ can be expressed as the "
        "difference of two consecutive cubes; (ii) $2n + 79$ is a perfect square.",
        "Solve for $z$: $1-iz = -1 + iz$. Simplify your answer as much as possible.",
        "Find the curve defined by $r^2 \\cos 2 \\theta = 4.$ (A) Line (B) Circle (C) Parabola (D) Ellipse",
        'If you think the answer is infinite, then enter "infinite". How many matrices $A$ satisfy $A^2=0$?',
    ]:
        assert problem_reasons(ok, CFG) == [], ok
    assert count_questions("Find $x$. Find $y$.", ["find"]) == (2, 0)


def test_gold_mismatch():
    assert gold_mismatch("5", "6")
    assert not gold_mismatch("0.5", "\\frac{1}{2}")
    assert not gold_mismatch("5", None) and not gold_mismatch(None, "5")


def test_validate_row_codes():
    ok = sol("g-1")
    assert validate_row(ok, REQUIRED_SOLUTION_FIELDS, 1000) == []
    cases = {
        "missing_field": {"completion": None},
        "not_finite": {"sample": math.nan},
        "bad_type": {"completion_tokens": "40"},
        "bad_value": {"origin": "synthetic"},
        "oversized": {"completion": "x" * 1001},
        "invalid_text": {"problem": "bad\x00text"},
    }
    for code, patch in cases.items():
        assert code in [r for r, _ in validate_row({**ok, **patch}, REQUIRED_SOLUTION_FIELDS, 1000)], code
    assert validate_row({**ok, "sample": True}, REQUIRED_SOLUTION_FIELDS, 1000) == [("bad_type", "sample")]


# ----------------------------------------------------------------------------- decontamination, dedup
def _bench_index() -> BenchmarkIndex:
    index = BenchmarkIndex()  # the configured defaults (filter_rules.DEFAULTS)
    for name, file in (("aime24", "aime24.jsonl"), ("math_500", "math500.jsonl")):
        index.add_jsonl(name, BENCH / file)
    return index


def _bench_problems(file: str) -> list[str]:
    return [json.loads(line)["problem"] for line in (BENCH / file).read_text().splitlines() if line.strip()]


def test_decontamination_catches_planted_benchmark_problems():
    index = _bench_index()
    aime, math500 = _bench_problems("aime24.jsonl"), _bench_problems("math500.jsonl")
    long_math = next(p for p in math500 if len(p.split()) > 40)
    planted = {
        "verbatim_aime": (aime[0], "aime24"),
        "verbatim_math": (math500[3], "math_500"),
        # reformatted: case, whitespace, LaTeX spacing/delimiters -> normalised exact match
        "reformatted": ("  " + aime[5].upper().replace("$", "\\(", 1).replace(" ", "  ") + " ", "aime24"),
        # reworded: new opening and closing sentence, one word changed in the middle
        "reworded": (
            "Consider the following. " + long_math.replace(" the ", " a ", 1) + " Justify briefly.",
            "math_500",
        ),
        # only a 14-word run survives, but it is most of this short problem's distinctive n-grams
        "embedded": (
            "A new story about apples. " + " ".join(aime[10].split()[5:19]) + " And then more new words.",
            "aime24",
        ),
    }
    for label, (text, bench) in planted.items():
        hit = index.check(text)
        verdict = BenchmarkIndex.verdict(hit)
        assert verdict is not None and bench in verdict[1], label
        assert any(m["benchmark"] == bench and m["span"] for m in hit["matches"]), label  # with the matched text
    assert BenchmarkIndex.verdict(index.check(aime[0]))[0] == "contaminated_exact"
    clean = "A farmer has 17 goats and buys 4 times as many sheep; the barn holds 100 animals. How many spaces remain?"
    assert BenchmarkIndex.verdict(index.check(clean)) is None


def test_short_benchmark_problems_match_as_whole_runs():
    index = BenchmarkIndex(ngram=13, min_words=5)
    index.add("b", "Compute $\\dbinom{8}{4}$ please now.")  # 6 words < 13
    index.add("b", "Find $x$.")  # 2 words: exact match only
    assert BenchmarkIndex.verdict(index.check("First, compute \\dbinom{8}{4} please now, then stop."))
    assert BenchmarkIndex.verdict(index.check("find x"))[0] == "contaminated_exact"
    assert BenchmarkIndex.verdict(index.check("Find x and y such that x+y=2 and x-y=0.")) is None


def test_exact_key_normalisation():
    assert exact_key("Find $x + y$.") == exact_key("find \\(x+y\\)") == exact_key("FIND  $x\\,+\\;y$ .")
    assert exact_key("x+y") != exact_key("x-y")
    assert exact_key("$\\dfrac{1}{2}$") == exact_key("\\frac{1}{2}")


def test_near_duplicates():
    base = (
        "Let $S$ be the set of positive integers $n$ such that $n^2 + 3n + 7$ is divisible by 11 and $n$ is "
        "less than 500. Find the number of elements of $S$ and the sum of all elements of $S$."
    )
    near = base.replace("less than 500", "less than 501")
    other = (
        "A circle of radius 5 is inscribed in a right triangle whose hypotenuse has length 26. Find the area "
        "of the triangle in square units, rounded to the nearest integer."
    )
    original = (
        "Two fair dice are rolled three times. What is the probability that the total of the first roll "
        "equals the total of the third roll, expressed as a common fraction?"
    )
    generated = [
        ("g-a", base),
        ("g-b", near),
        ("g-c", other),
        ("g-d", "  " + base.upper()),
        ("g-e", original.replace("common", "reduced")),
    ]
    dropped = dedup_problems(generated, [("p-1", original)], CFG["dedup"])
    assert dropped["g-b"] == ("near_duplicate", "g-a")
    assert dropped["g-d"] == ("duplicate", "g-a")
    assert dropped["g-e"] == ("near_duplicate_of_original", "p-1")
    assert "g-a" not in dropped and "g-c" not in dropped
    assert dedup_problems(generated, [], {**CFG["dedup"], "enabled": False}) == {}


# ----------------------------------------------------------------------------- end to end
def _write_parquet(rows: list[dict], path: Path, schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _pool(tmp: Path) -> Path:
    """Pool: one original with its own solution (used as-is), two the teacher solved (no solution)."""
    pool = [
        {
            "id": "p-aime1",
            "problem": "Find the number of ordered pairs of positive integers whose product is 12.",
            "solution": "List them: (1,12),(2,6),(3,4) and reversed gives 6.",
            "answer": "6",
            "origin": "original",
            "source": "aime",
        },
        {
            "id": "p-orig1",
            "problem": "What is the remainder when 100 is divided by 7? Give the remainder only.",
            "solution": None,
            "answer": "2",
            "origin": "original",
            "source": "math_train",
        },
        {
            "id": "p-orig2",
            "problem": "What is the remainder when 200 is divided by 7? Give the remainder only.",
            "solution": None,
            "answer": "4",
            "origin": "original",
            "source": "math_train",
        },
    ]
    return _write_parquet(pool, tmp / "pool.parquet")


def _fixture(tmp: Path) -> tuple[Path, Path]:
    """A realistic mix: good, bad, duplicated, contaminated generated rows; originals of both kinds."""
    aime0 = _bench_problems("aime24.jsonl")[0]
    rows = [
        sol(
            "g-good1",
            "A bag holds 4 red and 6 blue marbles. How many marbles are in the bag in total?",
            GOOD.replace("{5}", "{10}"),
        ),
        sol(
            "g-good1",
            "A bag holds 4 red and 6 blue marbles. How many marbles are in the bag in total?",
            GOOD.replace("{5}", "{10}"),
            sample=1,
        ),
        sol(
            "g-good2",
            "The sides of a rectangle are 3 and 7 units long. What is its perimeter in units?",
            GOOD.replace("{5}", "{20}"),
        ),
        sol(
            "g-dup",
            "the sides of a rectangle are 3 and 7 units long.  What is its perimeter in units?",
            GOOD.replace("{5}", "{20}"),
        ),
        sol(
            "g-trunc",
            "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour?",
            "<think>\nThe speed is distance over",
            finish_reason="length",
        ),
        sol(
            "g-nobox",
            "A square has area 49 square units. What is the length of its side in units?",
            "<think>\nsqrt 49\n</think>\n\nThe side is 7.",
        ),
        sol("g-multi", "Let $f(x)=2x+1$. Find $f(3)$. Compute $f(f(3))$ as well.", GOOD),
        sol("g-contam", aime0, GOOD.replace("{5}", "{204}")),
        sol(
            "p-orig1",
            "What is the remainder when 100 is divided by 7? Give the remainder only.",
            GOOD.replace("{5}", "{2}"),
            origin="original",
            source="math_train",
        ),
        sol(
            "p-orig2",
            "What is the remainder when 200 is divided by 7? Give the remainder only.",
            GOOD.replace("{5}", "{9}"),
            origin="original",
            source="math_train",
        ),
    ]
    return _write_parquet(rows, tmp / "solutions.parquet"), _pool(tmp)


def _benchmarks() -> dict:
    return {"aime24": {"path": str(BENCH / "aime24.jsonl")}, "math_500": {"path": str(BENCH / "math500.jsonl")}}


def _outputs(tmp: Path) -> dict[str, str]:
    names = {
        "original": "dataset/original.parquet",
        "generated": "dataset/generated.parquet",
        "card": "dataset/README.md",
        "rejects": "rejects.parquet",
        "funnel": "funnel.json",
        "funnel_csv": "funnel.csv",
        "plot": "funnel.png",
    }
    return {k: str(tmp / "out" / v) for k, v in names.items()}


def _run_all(tmp: Path, solutions: Path, pool: Path, cfg: dict) -> dict:
    flt.run_rules(
        str(solutions),
        str(pool),
        _benchmarks(),
        cfg,
        str(tmp / "cand.parquet"),
        str(tmp / "rr.parquet"),
        str(tmp / "rs.json"),
    )
    flt.run_model_shard(
        str(tmp / "cand.parquet"), "unused", 0, 1, {"filter": cfg, "seed": 0, "engine": ENGINE}, str(tmp / "v.parquet")
    )
    return flt.run_gather(
        str(tmp / "cand.parquet"),
        str(tmp / "rr.parquet"),
        str(tmp / "rs.json"),
        [str(tmp / "v.parquet")],
        cfg,
        _outputs(tmp),
    )


def _disabled(**over) -> dict:
    return {
        "min_solution_tokens": 8,
        "max_solution_tokens": 32768,
        "model_based": {"enabled": False, "shards": 1, "k": 1, "rule": "any"},
        **over,
    }


def test_rules_and_gather_end_to_end(tmp_path):
    solutions, pool = _fixture(tmp_path)
    funnel = _run_all(tmp_path, solutions, pool, _disabled())
    out = _outputs(tmp_path)
    gen = pq.read_table(out["generated"]).to_pylist()
    orig = pq.read_table(out["original"]).to_pylist()
    assert sorted((r["id"], r["sample"]) for r in gen) == [("g-good1", 0), ("g-good1", 1), ("g-good2", 0)]
    assert {r["id"] for r in orig} == {"p-aime1", "p-orig1"}  # p-orig2's teacher answer 9 != gold 4
    assert all(r["solution"] and r["problem"] for r in gen + orig)
    assert next(r for r in gen if r["id"] == "g-good2")["answer"] == "20"
    rejects = {r["id"]: r for r in pq.read_table(out["rejects"]).to_pylist()}
    assert rejects["g-dup"]["reason"] == "duplicate" and "g-good2" in rejects["g-dup"]["detail"]
    assert rejects["g-trunc"]["reason"] == "truncated" and "no_boxed" in rejects["g-trunc"]["reasons"]
    assert rejects["g-nobox"]["reason"] == "no_boxed"
    assert rejects["g-multi"]["reason"] == "problem_multi_question"
    assert rejects["g-contam"]["reason"] == "contaminated_exact"
    assert "aime24 aime2024-I-1 (exact)" in rejects["g-contam"]["detail"]  # the matched benchmark problem
    assert rejects["p-orig2"]["reason"] == "gold_mismatch"
    g = funnel["by_origin"]["generated"]
    assert (g["in"], g["kept"], g["rejected"], g["quarantined"]) == (8, 3, 5, 0)
    assert g["removed_fraction"] == pytest.approx(5 / 8, abs=1e-4)
    assert funnel["paper"]["removed_fraction_generated"] == 0.43
    assert funnel["decontamination"]["benchmarks"]["aime24"]["generated"]["exact"] == 1
    assert funnel["decontamination"]["benchmarks"]["math_500"]["generated"]["overlap"] == 0
    (flagged,) = [f for f in funnel["decontamination"]["flagged"] if f["origin"] == "generated"]
    assert flagged["id"] == "g-contam" and flagged["matches"][0]["problem"] == "aime2024-I-1"
    assert funnel["model_based"] == {
        "enabled": False,
        "k": 1,
        "rule": "any",
        "rows": 3,
        "checked": 0,
        "unchecked": 3,
        "solved_by_student": 0,
    }
    card = Path(out["card"]).read_text()
    assert "paper: ~43%" in card and "| aime24 | 30 | 1 |" in card
    assert "| g-contam | generated | aime24 | aime2024-I-1 | exact | every morning aya" in card
    # the Hub's metadata, and every removed row accounted for, the originals' too (p-orig2: gold mismatch)
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "other" and meta["language"] == ["en"] and meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] and meta["pretty_name"] and "math" in meta["tags"]
    assert meta["configs"][0]["data_files"][0] == {"split": "original", "path": "original.parquet"}
    assert "| filter | reason | generated rows removed | original rows removed |" in card
    table = card.split("| filter | reason | generated rows removed | original rows removed |")[1].split("\n\n")[0]
    removed = [line.split("|")[2:5] for line in table.splitlines()[2:]]
    assert sum(int(g) for _, g, _ in removed) == 5 and sum(int(o) for _, _, o in removed) == 1
    assert any(r.strip() == "gold_mismatch" and o.strip() == "1" for r, _, o in removed)
    assert Path(out["plot"]).stat().st_size > 1000
    assert Path(out["funnel_csv"]).read_text().startswith("origin,filter,reason,in,removed,out\n")
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"original": out["original"], "generated": out["generated"]})
    assert ds["generated"].num_rows == 3 and set(ds["original"].column_names) >= {"problem", "solution", "answer"}


def test_accounting_identity_on_messy_input(tmp_path):
    """NaN, wrong types, missing fields, invalid UTF-8, oversized and duplicate rows: nothing crashes or vanishes."""
    good = sol(
        "g-ok",
        "A box holds 12 pencils and 9 pens. How many writing tools does the box hold?",
        GOOD.replace("{5}", "{21}"),
    )
    rows = [
        good,
        {**good, "sample": 1},
        {**good},  # duplicate (id, sample)
        {**good, "id": "g-nan", "sample": float("nan")},
        {**good, "id": "g-none", "completion": None},
        {**good, "id": None},
        {**good, "id": "g-big", "completion": "x" * 5000},
        {**good, "id": "g-nul", "problem": "What is 1+1?\x00 Answer with one integer please."},
        {**good, "id": "g-origin", "origin": "alien"},
        {**good, "id": "g-bytes"},
    ]
    problems = [r["problem"].encode() for r in rows]
    problems[-1] = b"Broken \xff\xfe bytes in a problem statement here"  # invalid UTF-8 in a string column
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "sample": pa.array([r["sample"] for r in rows], pa.float64()),
            "problem": pa.array(problems, pa.binary()).view(pa.string()),
            **{
                k: pa.array([r[k] for r in rows], pa.string())
                for k in ("origin", "source", "completion", "finish_reason")
            },
            "completion_tokens": pa.array([r["completion_tokens"] for r in rows], pa.int64()),
        }
    )
    solutions = tmp_path / "messy.parquet"
    pq.write_table(table, solutions)
    pool = _pool(tmp_path)
    cfg = _disabled(max_field_chars=1000)
    funnel = _run_all(tmp_path, solutions, pool, cfg)
    out = _outputs(tmp_path)
    kept = pq.read_table(out["generated"]).to_pylist()
    rejects = pq.read_table(out["rejects"]).to_pylist()
    sol_rejects = [r for r in rejects if r["file"] == "solutions"]
    # every input row index appears exactly once among kept + rejected + quarantined
    cand = pq.read_table(tmp_path / "cand.parquet").to_pylist()
    kept_rows = sorted(r["row"] for r in cand if r["file"] == "solutions")
    assert len(kept) == len(kept_rows) == 2
    assert sorted(kept_rows + [r["row"] for r in sol_rejects]) == list(range(len(rows)))
    by_row = {r["row"]: r for r in sol_rejects}
    assert by_row[2]["reason"] == "duplicate_key"
    assert by_row[3]["reason"] == "not_finite" and by_row[3]["field"] == "sample"
    assert by_row[4]["reason"] == "missing_field" and by_row[4]["field"] == "completion"
    assert by_row[5]["reason"] == "missing_field" and by_row[5]["field"] == "id"
    assert by_row[6]["reason"] == "oversized"
    assert by_row[7]["reason"] == "invalid_text"
    assert by_row[8]["reason"] == "bad_value" and by_row[8]["field"] == "origin"
    assert by_row[9]["reason"] == "invalid_text" and by_row[9]["field"] == "problem"
    assert all(r["status"] == "quarantined" and r["raw"] for r in sol_rejects)
    g = funnel["by_origin"]["generated"]
    unknown = funnel["by_origin"]["unknown"]
    assert g["in"] + unknown["in"] == len(rows) and funnel["by_origin"]["original"]["in"] == 1  # the pool row
    assert g["in"] == g["kept"] + g["rejected"] + g["quarantined"]
    # wrong column types: every row quarantined with bad_type, never a crash
    bad = pa.table(
        {
            "id": ["g-1", "g-2"],
            "sample": ["0", "1"],
            "problem": ["A valid problem text?"] * 2,
            "origin": ["generated"] * 2,
            "source": ["s"] * 2,
            "completion": [GOOD] * 2,
            "finish_reason": ["stop"] * 2,
            "completion_tokens": [1.5, 40.0],
        }
    )
    pq.write_table(bad, tmp_path / "bad.parquet")
    funnel = _run_all(tmp_path, tmp_path / "bad.parquet", pool, cfg)
    assert funnel["by_origin"]["generated"]["quarantined"] == 2
    rej = pq.read_table(out["rejects"]).to_pylist()
    assert {r["reason"] for r in rej if r["file"] == "solutions"} == {"bad_type"}
    # a missing column: every row quarantined as missing_field of that column
    pq.write_table(
        bad.drop_columns(["finish_reason"]).set_column(1, "sample", pa.array([0, 1])), tmp_path / "nocol.parquet"
    )
    funnel = _run_all(tmp_path, tmp_path / "nocol.parquet", pool, cfg)
    rej = [r for r in pq.read_table(out["rejects"]).to_pylist() if r["file"] == "solutions"]
    assert [r["reason"] for r in rej] == ["missing_field"] * 2
    assert rej[0]["field"] == "finish_reason,completion_tokens"  # row 0 also has a fractional token count
    assert rej[0]["reasons"] == "missing_field,bad_type" and rej[1]["field"] == "finish_reason"
    # an empty input is not an error
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    funnel = _run_all(tmp_path, tmp_path / "empty.parquet", pool, cfg)
    assert funnel["by_origin"]["generated"]["in"] == 0 and funnel["removed_fraction_generated"] is None


def test_cli_rules_model_gather(tmp_path):
    solutions, pool = _fixture(tmp_path)
    settings = {"filter": _disabled(), "benchmarks": _benchmarks(), "seed": 0, "engine": ENGINE}
    py = [sys.executable, "-m", "scalediff.filter"]
    s = ["--settings", json.dumps(settings)]
    cand, rr, rs = tmp_path / "c.parquet", tmp_path / "r.parquet", tmp_path / "s.json"
    subprocess.run(
        [
            *py,
            "rules",
            "--solutions",
            str(solutions),
            "--pool",
            str(pool),
            "--candidates",
            str(cand),
            "--rejects",
            str(rr),
            "--stats",
            str(rs),
            *s,
        ],
        check=True,
    )
    verdicts = []
    for i in (1, 2):
        v = tmp_path / f"v{i}.parquet"
        subprocess.run(
            [
                *py,
                "model-shard",
                "--candidates",
                str(cand),
                "--model",
                "none",
                "--shard",
                f"{i}-of-2",
                "--output",
                str(v),
                *s,
            ],
            check=True,
        )
        verdicts.append(str(v))
    out = _outputs(tmp_path)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in out.items()]
    subprocess.run(
        [
            *py,
            "gather",
            "--candidates",
            str(cand),
            "--rules-rejects",
            str(rr),
            "--rules-stats",
            str(rs),
            "--verdicts",
            *verdicts,
            *args,
            *s,
        ],
        check=True,
    )
    funnel = json.loads(Path(out["funnel"]).read_text())
    assert funnel["by_origin"]["generated"]["kept"] == 3
    assert sum(pq.read_metadata(v).num_rows for v in verdicts) == 3  # whole problems split over the shards
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "dataset",
        "rejects.parquet",
        "funnel.json",
        "funnel.csv",
        "funnel.png",
    }


# ----------------------------------------------------------------------------- model-based (tiny model)
def test_student_drop_rules():
    assert flt.student_drops(1, 4, "any") and not flt.student_drops(0, 4, "any")
    assert not flt.student_drops(2, 4, "majority") and flt.student_drops(3, 4, "majority")
    assert flt.student_drops(1, 1, "majority")
    with pytest.raises(ValueError, match="model_based.rule: 'all'"):
        flt.student_drops(4, 4, "all")  # a rule it does not know is an error, not "majority"


@pytest.mark.slow
def test_model_based_drops_problems_the_student_solves(tmp_path):
    """A student that always answers 7 drops exactly the rows whose teacher answer is 7."""
    from conftest import build_tiny, train_constant

    base = build_tiny(tmp_path / "base", template="chatml", arch="qwen2")
    student = train_constant(base, tmp_path / "student", "So $\\boxed{7}$.<|im_end|>")
    rows = [
        sol("g-seven", "A week has how many days? Answer with a single integer please.", GOOD.replace("{5}", "{7}")),
        sol("g-eight", "How many legs does a spider have? Answer with a single integer.", GOOD.replace("{5}", "{8}")),
        sol(
            "g-frac",
            "What is fourteen divided by two, as a reduced fraction or integer?",
            GOOD.replace("{5}", "{\\frac{14}{2}}"),
        ),
    ]
    solutions = _write_parquet(rows, tmp_path / "solutions.parquet")
    pool = _pool(tmp_path)
    # The student is trained until it answers 7 (conftest.train_constant): 3 samples at T=0.1, `any` rule.
    cfg = _disabled(
        model_based={
            "enabled": True,
            "shards": 1,
            "k": 3,
            "rule": "any",
            "temperature": 0.1,
            "top_p": 0.95,
            "max_tokens": 24,
        }
    )
    flt.run_rules(
        str(solutions),
        str(pool),
        _benchmarks(),
        cfg,
        str(tmp_path / "cand.parquet"),
        str(tmp_path / "rr.parquet"),
        str(tmp_path / "rs.json"),
    )
    stats = flt.run_model_shard(
        str(tmp_path / "cand.parquet"),
        str(student),
        0,
        1,
        {"filter": cfg, "seed": 0, "engine": ENGINE},
        str(tmp_path / "v.parquet"),
    )
    assert stats == {"rows": 3, "checked": 3, "dropped": 2}
    funnel = flt.run_gather(
        str(tmp_path / "cand.parquet"),
        str(tmp_path / "rr.parquet"),
        str(tmp_path / "rs.json"),
        [str(tmp_path / "v.parquet")],
        cfg,
        _outputs(tmp_path),
    )
    kept = pq.read_table(_outputs(tmp_path)["generated"]).to_pylist()
    assert [r["id"] for r in kept] == ["g-eight"]
    assert funnel["model_based"]["solved_by_student"] == 2
    rejects = [r for r in pq.read_table(_outputs(tmp_path)["rejects"]).to_pylist() if r["reason"] == "student_solved"]
    assert {r["id"] for r in rejects} == {"g-seven", "g-frac"}
    assert not Path(str(tmp_path / "v.parquet") + ".partial.jsonl").exists()
