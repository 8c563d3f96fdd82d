"""filter rules stage: the originals' policies, superseded pool solutions, pool quarantine, negative answers,
lone surrogates and pathological answers, each deciding a row through ``run_rules``.

Every test runs the stage twice (or on a row and its twin) so that ignoring the setting or the check
changes the outcome: a row kept under one setting is removed under the other, with its reason.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_filter import GOOD, _bench_problems, _benchmarks, _disabled, _write_parquet, sol

from scalediff import filter as flt
from scalediff.filter_rules import REQUIRED_SOLUTION_FIELDS, validate_row

# Both have a gold answer in the pool; the teacher solves them (no pool solution).
P100 = "What is the remainder when 100 is divided by 7? Give the remainder only."
P200 = "What is the remainder when 200 is divided by 7? Give the remainder only."
# Ships its own solution in the pool.
PAIRS = "Find the number of ordered pairs of positive integers whose product is 12."


def boxed(answer: str) -> str:
    return GOOD.replace("{5}", "{" + answer + "}")


def pool_row(pid: str, problem: str, solution: str | None, answer: str | None, **kw) -> dict:
    return {
        "id": pid,
        "problem": problem,
        "solution": solution,
        "answer": answer,
        "origin": "original",
        "source": "math_train",
        **kw,
    }


def original(pid: str, problem: str, completion: str, **kw) -> dict:
    return sol(pid, problem, completion, origin="original", source="math_train", **kw)


def run(tmp: Path, solutions: list[dict] | Path, pool: list[dict] | Path, cfg: dict, workers: int = 1) -> dict:
    """``run_rules`` on the rows; ``{(file, id, sample): reject row or "kept"}`` for every input row."""
    tmp.mkdir(parents=True, exist_ok=True)
    sol_path = solutions if isinstance(solutions, Path) else _write_parquet(solutions, tmp / "solutions.parquet")
    pool_path = pool if isinstance(pool, Path) else _write_parquet(pool, tmp / "pool.parquet")
    cand, rejects = tmp / "cand.parquet", tmp / "rejects.parquet"
    flt.run_rules(
        str(sol_path), str(pool_path), _benchmarks(), cfg, str(cand), str(rejects), str(tmp / "stats.json"), workers
    )
    out: dict = {(r["file"], r["id"], r["sample"]): "kept" for r in pq.read_table(cand).to_pylist()}
    for r in pq.read_table(rejects).to_pylist():
        key = (r["file"], r["id"], r["sample"])
        assert key not in out, key
        out[key] = r
    return out


def reason(outcome: dict | str) -> str:
    return outcome if outcome == "kept" else outcome["reason"]


def filter_of(outcome: dict | str) -> str:
    return outcome if outcome == "kept" else outcome["filter"]


def fate(outcome: dict | str) -> tuple[str, ...]:
    """("kept",) or (status, reason, field)."""
    return ("kept",) if outcome == "kept" else (outcome["status"], outcome["reason"], outcome["field"])


# ----------------------------------------------------------------------------- originals' policies
def test_original_solution_rules_policy(tmp_path):
    """``original.solution_rules``: a truncated teacher solution of an original (right answer) is removed
    as ``truncated`` when on and kept when off; a generated truncated row is removed either way. The
    second run uses 2 worker processes, where the row-local solution checks then happen."""
    truncated = "<think>\nDivide: 100 = 14 * 7 + 2, so the remainder is \\boxed{2} and now let me also"
    solutions = [
        original("p-100", P100, truncated, finish_reason="length"),
        original("p-200", P200, boxed("4")),
        sol("g-trunc", "A train goes 60 miles in 1.5 hours. What is its speed in miles per hour?", truncated),
    ]
    pool = [pool_row("p-100", P100, None, "2"), pool_row("p-200", P200, None, "4")]
    on = run(tmp_path / "on", solutions, pool, _disabled(original={"solution_rules": True}))
    off = run(tmp_path / "off", solutions, pool, _disabled(original={"solution_rules": False}), workers=2)
    assert reason(on["solutions", "p-100", 0]) == "truncated"
    assert filter_of(on["solutions", "p-100", 0]) == "solution"
    assert off["solutions", "p-100", 0] == "kept"
    for out in (on, off):
        assert out["solutions", "p-200", 0] == "kept"
        assert reason(out["solutions", "g-trunc", 0]) == "truncated"  # generated rows always get the rules


def test_original_check_gold_policy(tmp_path):
    """``original.check_gold``: a teacher answer 9 against the pool's gold 4 is ``gold_mismatch`` when
    on (the detail names both answers) and kept when off; a correct answer is kept either way."""
    solutions = [original("p-100", P100, boxed("2")), original("p-200", P200, boxed("9"))]
    pool = [pool_row("p-100", P100, None, "2"), pool_row("p-200", P200, None, "4")]
    on = run(tmp_path / "on", solutions, pool, _disabled(original={"check_gold": True}))
    off = run(tmp_path / "off", solutions, pool, _disabled(original={"check_gold": False}))
    assert reason(on["solutions", "p-200", 0]) == "gold_mismatch"
    assert on["solutions", "p-200", 0]["detail"] == "gold_mismatch: gold '4', teacher '9'"
    assert off["solutions", "p-200", 0] == "kept"
    assert on["solutions", "p-100", 0] == off["solutions", "p-100", 0] == "kept"


def test_original_decontaminate_policy(tmp_path):
    """``original.decontaminate``: originals that are benchmark problems (a teacher-solved one and one
    with its own pool solution) are kept under ``report`` and removed under ``remove``, naming the
    benchmark; a generated copy of a benchmark problem is removed under both."""
    aime = _bench_problems("aime24.jsonl")
    math500 = _bench_problems("math500.jsonl")
    solutions = [
        original("p-aime", aime[1], boxed("33")),
        original("p-100", P100, boxed("2")),
        sol("g-aime", aime[2], boxed("25")),
    ]
    pool = [
        pool_row("p-aime", aime[1], None, "33"),
        pool_row("p-100", P100, None, "2"),
        pool_row("p-math", math500[3], "Worked solution: the answer is 10.", "10"),
        pool_row("p-pairs", PAIRS, "List them: (1,12),(2,6),(3,4) and reversed gives 6.", "6"),
    ]
    report = run(tmp_path / "report", solutions, pool, _disabled(original={"decontaminate": "report"}))
    remove = run(tmp_path / "remove", solutions, pool, _disabled(original={"decontaminate": "remove"}))
    for key, bench in ((("solutions", "p-aime", 0), "aime24"), (("pool", "p-math", None), "math_500")):
        assert report[key] == "kept", key
        assert filter_of(remove[key]) == "decontamination" and bench in remove[key]["detail"], key
    for out in (report, remove):
        assert filter_of(out["solutions", "g-aime", 0]) == "decontamination"
        assert out["solutions", "p-100", 0] == out["pool", "p-pairs", None] == "kept"


def test_pool_solution_superseded_by_distilled(tmp_path):
    """A pool row's own solution is removed as ``superseded_by_distilled`` when the teacher solved the
    same problem (its solution is kept instead), and kept when the teacher did not."""
    pool = [
        pool_row("p-pairs", PAIRS, "List them: (1,12),(2,6),(3,4) and reversed gives 6.", "6"),
        pool_row("p-100", P100, None, "2"),
    ]
    teacher = original("p-pairs", PAIRS, boxed("6"))
    with_teacher = run(tmp_path / "with", [teacher, original("p-100", P100, boxed("2"))], pool, _disabled())
    without = run(tmp_path / "without", [original("p-100", P100, boxed("2"))], pool, _disabled())
    superseded = with_teacher["pool", "p-pairs", None]
    assert reason(superseded) == "superseded_by_distilled"
    assert superseded["filter"] == "superseded" and superseded["status"] == "rejected"
    assert with_teacher["solutions", "p-pairs", 0] == "kept"
    assert without["pool", "p-pairs", None] == "kept"
    # A teacher solution that the checks reject does not supersede: the pool's own one stays, so the
    # problem is not left without any solution.
    bad = original("p-pairs", PAIRS, boxed("6"), finish_reason="length")
    failed = run(tmp_path / "failed", [bad, original("p-100", P100, boxed("2"))], pool, _disabled())
    assert reason(failed["solutions", "p-pairs", 0]) == "truncated"
    assert failed["pool", "p-pairs", None] == "kept"


# ----------------------------------------------------------------------------- quarantine, negatives, surrogates
# A lone surrogate as a non-strict UTF-8 writer stores it (``"\ud800".encode("utf-8", "surrogatepass")``):
# Parquet holds the bytes, a strict reader cannot decode them.
SURROGATE = "\ud800".encode("utf-8", "surrogatepass")


def _string_table(rows: list[dict], raw: dict[tuple[int, str], bytes]) -> pa.Table:
    """Rows as an all-string table, with ``raw[(row, column)]`` bytes written unvalidated into a cell."""
    columns = {}
    for name in rows[0]:
        cells = [None if r[name] is None else str(r[name]).encode() for r in rows]
        for (i, col), value in raw.items():
            if col == name:
                cells[i] = value
        columns[name] = pa.array(cells, pa.binary()).view(pa.string())
    return pa.table(columns)


def test_malformed_pool_rows_are_quarantined(tmp_path):
    """Pool rows with a solution are inputs: a NUL or a lone surrogate in any text, an origin other than
    ``original``, a missing or blank id each quarantine the row with its field; none vanishes."""
    good = pool_row("p-pairs", PAIRS, "List them: (1,12),(2,6),(3,4) and reversed gives 6.", "6")
    cases = {  # id -> (row, (reason, field))
        "p-nul": ({**good, "solution": "List them:\x00 (1,12), (2,6), (3,4)."}, ("invalid_text", "solution")),
        "p-alien": ({**good, "origin": "alien"}, ("bad_value", "origin")),
        "p-gen": ({**good, "origin": "generated"}, ("bad_value", "origin")),  # the pool holds originals only
        "p-sur-sol": (good, ("invalid_text", "solution")),
        "p-sur-pro": (good, ("invalid_text", "problem")),
        "p-sur-ans": (good, ("invalid_text", "answer")),
    }
    rows = [good, pool_row("p-100", P100, None, "2")] + [{**row, "id": pid} for pid, (row, _) in cases.items()]
    rows += [{**good, "id": None}, {**good, "id": "  "}]
    row_of = {r["id"]: i for i, r in enumerate(rows)}
    text = b"text with a lone surrogate " + SURROGATE + b" in it"
    surrogates = {(row_of[f"p-sur-{c[:3]}"], c): text for c in ("solution", "problem", "answer")}
    pool = tmp_path / "pool.parquet"
    pq.write_table(_string_table(rows, surrogates), pool)
    out = run(tmp_path, [original("p-100", P100, boxed("2"))], pool, _disabled())
    assert out["pool", "p-pairs", None] == "kept"
    for pid, (_, (code, field)) in cases.items():
        assert fate(out["pool", pid, None]) == ("quarantined", code, field), pid
        assert out["pool", pid, None]["raw"], pid
    blank = [r for (f, pid, _), r in out.items() if f == "pool" and (pid is None or not pid.strip())]
    assert sorted((r["reason"], r["field"], r["row"]) for r in blank) == [
        ("missing_field", "id", len(rows) - 2),
        ("missing_field", "id", len(rows) - 1),
    ]
    stats = json.loads((tmp_path / "stats.json").read_text())
    # every pool row with a solution (all but p-100) is an input and accounted for
    assert stats["inputs"] == {"solutions": 1, "pool_with_solution": len(rows) - 1, "pool_without_solution": 1}
    assert sum(c["in"] for c in stats["rows"].values()) == len(rows)


def test_negative_integers_and_surrogates_in_teacher_rows(tmp_path):
    """Negative answers compare by value and sign (gold -3: teacher -3 kept, teacher 3 ``gold_mismatch``;
    boxes 3 and -3 disagree, -3 and -6/2 agree); a negative sample index or token count and a lone
    surrogate in a completion quarantine the row."""
    rows = [
        original("p-neg", P100.replace("100", "-100"), boxed("-3")),
        original("p-pos", P200.replace("200", "-200"), boxed("3")),
        sol("g-neg", "What is the product of negative one and three, as an integer?", boxed("-3")),
        sol("g-dis", "What is the sum of negative five and two, as an integer?", boxed("3") + " or $\\boxed{-3}$"),
        sol(
            "g-agree",
            "What is the sum of negative four and one, as an integer?",
            boxed("-3") + " = $\\boxed{-\\frac{6}{2}}$",
        ),
        sol("g-sample", "What is the difference of one and four, as an integer?", boxed("-3"), sample=-1),
        sol("g-tokens", "What is the difference of two and five, as an integer?", boxed("-3"), completion_tokens=-5),
        sol("g-sur", "What is the difference of three and six, as an integer?", boxed("-3")),
    ]
    table = _string_table(rows, {(len(rows) - 1, "completion"): GOOD.encode() + SURROGATE})
    table = table.set_column(1, "sample", pa.array([r["sample"] for r in rows], pa.int64()))
    for name in ("completion_tokens", "prompt_tokens"):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array([r[name] for r in rows]))
    solutions = tmp_path / "solutions.parquet"
    pq.write_table(table, solutions)
    pool = [pool_row("p-neg", rows[0]["problem"], None, "-3"), pool_row("p-pos", rows[1]["problem"], None, "-3")]
    out = run(tmp_path, solutions, pool, _disabled())
    assert out["solutions", "p-neg", 0] == out["solutions", "g-neg", 0] == out["solutions", "g-agree", 0] == "kept"
    assert reason(out["solutions", "p-pos", 0]) == "gold_mismatch"
    assert out["solutions", "p-pos", 0]["detail"] == "gold_mismatch: gold '-3', teacher '3'"
    assert reason(out["solutions", "g-dis", 0]) == "boxed_disagree"
    assert fate(out.get(("solutions", "g-sample", -1))) == ("quarantined", "bad_value", "sample")
    assert fate(out["solutions", "g-tokens", 0]) == ("quarantined", "bad_value", "completion_tokens")
    assert fate(out["solutions", "g-sur", 0]) == ("quarantined", "invalid_text", "completion")
    answers = {r["id"]: r["answer"] for r in pq.read_table(tmp_path / "cand.parquet").to_pylist()}
    assert answers == {"p-neg": "-3", "g-neg": "-3", "g-agree": "-\\frac{6}{2}"}


def test_validate_row_lone_surrogate_and_nul_in_memory():
    """Rows that reach validation as Python strings (not through the Parquet reader, which already
    refuses undecodable bytes): a lone surrogate or a NUL in any text field is ``invalid_text``."""
    row = sol("g-1")
    for field in ("problem", "completion"):
        for bad in ("\ud800", "\udfff", "\x00"):
            got = validate_row({**row, field: f"text {bad} more"}, REQUIRED_SOLUTION_FIELDS, 1000)
            assert got == [("invalid_text", field)], (field, bad)
    assert validate_row({**row, "problem": "a proper pair \U0001f600 is fine"}, REQUIRED_SOLUTION_FIELDS, 1000) == []


@pytest.mark.slow
def test_pathological_answer_in_filter_worker_processes(tmp_path):
    """``9^{9^{9^{9}}}`` through the rules CLI with 2 worker processes (boxes compared there) and the
    gold check (in the main process): math-verify's timeouts end both checks, the rows are rejected
    for the right reason, and the stage finishes instead of hanging."""
    import sys

    from test_answers import run_or_kill_group

    tower = "9^{9^{9^{9}}}"
    solutions = [
        sol("g-tower", "What is nine to the power nine, nested four times deep?", boxed(tower) + " or $\\boxed{5}$"),
        original("p-100", P100, boxed(tower)),
        sol("g-ok", "What is the sum of two and three, written as an integer?"),
    ]
    sol_path = _write_parquet(solutions, tmp_path / "solutions.parquet")
    pool_path = _write_parquet([pool_row("p-100", P100, None, "2")], tmp_path / "pool.parquet")
    settings = {"filter": _disabled(), "benchmarks": _benchmarks()}
    cand, rejects = tmp_path / "cand.parquet", tmp_path / "rejects.parquet"
    args = ["--solutions", sol_path, "--pool", pool_path, "--candidates", cand, "--rejects", rejects]
    args += ["--stats", tmp_path / "stats.json", "--workers", "2", "--settings", json.dumps(settings)]
    start = time.monotonic()
    cmd = [sys.executable, "-m", "scalediff.filter", "rules", *map(str, args)]
    _, stderr, returncode = run_or_kill_group(cmd, 240)
    if returncode is None:
        pytest.fail("filter rules still running after 240 s on a pathological answer")
    assert returncode == 0, stderr[-3000:]
    elapsed = time.monotonic() - start
    out = {r["id"]: r for r in pq.read_table(rejects).to_pylist()}
    assert reason(out["g-tower"]) == "boxed_disagree"
    assert out["p-100"]["detail"] == f"gold_mismatch: gold '2', teacher '{tower}'"
    assert [r["id"] for r in pq.read_table(cand).to_pylist()] == ["g-ok"]
    print(f"rules CLI with 2 workers on a pathological answer: {elapsed:.1f} s")


def test_numbers_changed_policy(tmp_path):
    """``decontamination.numbers_changed``: a generated problem that is a benchmark problem's words with
    every number changed (and too few shared 8-grams to be flagged by share) is kept and counted under
    ``report``, and removed as ``contaminated_numbers`` naming the benchmark problem under ``remove``."""
    from scalediff.decontam import BenchmarkIndex

    index = BenchmarkIndex()
    for i, p in enumerate(_bench_problems("aime24.jsonl")):
        index.add("aime24", p, str(i))
    renumbered = [re.sub(r"\d+", lambda m: str(int(m.group()) * 3 + 7), p) for p in _bench_problems("aime24.jsonl")]
    copy = next(p for p in renumbered if not index.check(p)["remove"])  # the share rule alone keeps it
    solutions = [sol("g-renum", copy, boxed("25")), sol("g-new", PAIRS, boxed("6"))]
    pool = [pool_row("p-100", P100, None, "2")]
    report = run(tmp_path / "report", solutions, pool, _disabled())
    remove = run(tmp_path / "remove", solutions, pool, _disabled(decontamination={"numbers_changed": "remove"}))
    assert report["solutions", "g-renum", 0] == "kept"
    counts = json.loads((tmp_path / "report" / "stats.json").read_text())["decontamination"]
    assert counts["benchmarks"]["aime24"]["generated"]["numbers"] == 1
    assert counts["benchmarks"]["aime24"]["generated"]["rows_removed"] == 0
    (listed,) = counts["flagged"]
    assert listed["id"] == "g-renum" and listed["matches"][0]["kind"] == "numbers"
    rejected = remove["solutions", "g-renum", 0]
    assert (rejected["filter"], rejected["reason"]) == ("decontamination", "contaminated_numbers")
    assert rejected["detail"].startswith("contaminated_numbers: aime24 aime2024-")
    assert "(the same words, other numbers)" in rejected["detail"]
    assert report["solutions", "g-new", 0] == remove["solutions", "g-new", 0] == "kept"
