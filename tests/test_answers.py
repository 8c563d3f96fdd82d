import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scalediff import answers


def test_final_segment_and_boxes():
    text = "<think>maybe \\boxed{1}</think>So \\boxed{\\frac{1}{2}} and \\boxed{x^{2}}"
    assert answers.final_segment(text) == "So \\boxed{\\frac{1}{2}} and \\boxed{x^{2}}"
    assert answers.final_segment("no tags") == "no tags"
    assert answers.extract_boxed(text) == ["1", "\\frac{1}{2}", "x^{2}"]
    assert answers.final_answer(text) == "x^{2}"


def test_final_answer_none_without_box():
    assert answers.final_answer("The answer is 5.") is None
    # A box only inside the reasoning does not count.
    assert answers.final_answer("<think>\\boxed{5}</think> I give up.") is None
    # Truncated box (no closing brace) is not an answer.
    assert answers.final_answer("so \\boxed{\\frac{1}{2") is None


def test_wrap_gold_is_needed():
    # SPEC §6: a raw LaTeX gold mis-parses; wrapped it does not.
    assert answers.wrap_gold("2^{99}") == "$2^{99}$"
    assert not answers.answers_agree("2", "2^{99}")
    assert answers.answers_agree("2^{99}", "2^{99}")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "\\frac12"),
        ("033", "33"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ],
)
def test_answers_agree(pred, gold):
    assert answers.answers_agree(pred, gold)


def test_answers_disagree():
    assert not answers.answers_agree("3", "\\frac{1}{2}")
    assert not answers.answers_agree("", "1")


def test_score_prediction():
    tail = "Therefore, the final answer is: $\\boxed{2^{99}}$. I hope it is correct"
    assert answers.score_prediction(tail, "2^{99}")
    assert not answers.score_prediction("Therefore, the final answer is: $\\boxed{2}$.", "2^{99}")
    assert answers.score_prediction("<think>try \\boxed{7}</think>" + tail, "2^{99}")
    assert not answers.score_prediction("<think>" + tail + "</think> so \\boxed{7}", "2^{99}")
    assert answers.score_prediction("\\boxed{\\frac{1}{2}}", "0.5")


def test_is_parsable():
    assert answers.is_parsable("\\frac{1}{2}")
    assert answers.is_parsable("2^{99}")
    assert not answers.is_parsable("")
    assert not answers.is_parsable("   ")


def test_parse_off_main_thread():
    # signal.alarm only works on the main thread; results must not change in a worker thread.
    results: dict[str, object] = {}

    def work():
        results["agree"] = answers.answers_agree("2^{99}", "2^{99}")
        results["wrong"] = answers.answers_agree("2", "2^{99}")
        results["parsed"] = answers.parse("$2^{99}$")

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)  # a hung check fails here instead of hanging the suite
    assert not t.is_alive()
    assert results["agree"] is True
    assert results["wrong"] is False
    assert results["parsed"] == answers.parse("$2^{99}$")


# ----------------------------------------------------------------------------- pathological answers
TOWER = "9^{9^{9^{9}}}"  # sympy would try to compute 9^(9^387420489)
# Each check below makes at most a few math-verify calls of TIMEOUT_SECONDS each; the child interpreter
# adds its start-up (imports) and the sandbox child's. A broken timeout hangs instead (killed at HANG_S).
HANG_S = 120


def _run_isolated(code: str) -> dict:
    """Run ``code`` (which prints one JSON line) in a fresh interpreter with a memory cap, so that a hang
    fails the test instead of freezing pytest (sympy's big-integer loops hold the GIL)."""
    import json
    import resource

    def limit() -> None:  # a runaway power must not eat the shared machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    stdout, stderr, returncode = run_or_kill_group([sys.executable, "-c", code], HANG_S, preexec_fn=limit)
    if returncode is None:
        pytest.fail(f"math-verify check of {TOWER} still running after {HANG_S} s")
    assert returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def run_or_kill_group(cmd: list[str], timeout: float, **kw) -> tuple[str, str, int | None]:
    """``(stdout, stderr, returncode)``; past ``timeout`` the command and every process it started
    (sandbox children, worker processes stuck in sympy) are killed and returncode is None."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return stdout, stderr, proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return stdout, stderr, None


CHECKS = f"""
import json, time
from scalediff import answers

def timed(fn, *args):
    start = time.monotonic()
    value = fn(*args)
    return value if isinstance(value, bool) else len(value), round(time.monotonic() - start, 2)

def checks():
    return {{
        "agree": timed(answers.answers_agree, {TOWER!r}, "5"),
        "score": timed(answers.score_prediction, "So $\\\\boxed{{{TOWER}}}$.", "5"),
        "parsable": timed(answers.is_parsable, {TOWER!r}),
        "parse": timed(answers.parse, "${TOWER}$"),
        "sane": timed(answers.answers_agree, "-3", "-3"),
        "sane_wrong": timed(answers.answers_agree, "3", "-3"),
    }}
"""


def _assert_quick_and_false(results: dict, limit: float) -> None:
    assert results["agree"][0] is False and results["score"][0] is False
    assert results["parsable"][0] is True and results["parse"][0] > 0  # it is a valid (huge) expression
    assert results["sane"][0] is True and results["sane_wrong"][0] is False
    for name, (_, seconds) in results.items():
        assert seconds < limit, (name, seconds, results)


def test_pathological_answer_returns_false_quickly_on_the_main_thread():
    results = _run_isolated(CHECKS + "print(json.dumps(checks()))")
    # one math-verify timeout per check, plus slack for a busy machine
    _assert_quick_and_false(results, 3 * answers.TIMEOUT_SECONDS)


@pytest.mark.slow
def test_pathological_answer_returns_false_quickly_in_worker_threads():
    """Off the main thread math-verify's alarm cannot fire; the checks run in a sandbox child process
    with the same timeouts (the first call also starts that child). Two threads check at once."""
    code = CHECKS + (
        "import threading\n"
        "out = {}\n"
        "threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, checks())) for i in range(2)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(json.dumps(out))\n"
    )
    results = _run_isolated(code)
    assert set(results) == {"0", "1"}
    for per_thread in results.values():
        _assert_quick_and_false(per_thread, answers.CALL_DEADLINE + 30)  # + the sandbox child's start-up


def test_sandbox_deadline_kills_a_stuck_check_and_restarts():
    """The sandbox's hard deadline (for sympy work that no alarm interrupts): with CALL_DEADLINE below
    math-verify's own timeout, a slow check returns False at the deadline and the next check gets a
    fresh child."""
    code = CHECKS + (
        "import threading\n"
        "out = {}\n"
        "def work():\n"
        "    out['warm'] = timed(answers.answers_agree, '1', '1')  # starts the sandbox child\n"
        "    answers.CALL_DEADLINE = 1\n"
        "    out['stuck'] = timed(answers.answers_agree, " + repr(TOWER) + ", '5')\n"
        "    answers.CALL_DEADLINE = 60\n"
        "    out['after'] = timed(answers.answers_agree, '-3', '-3')\n"
        "t = threading.Thread(target=work)\n"
        "t.start()\n"
        "t.join()\n"
        "print(json.dumps(out))\n"
    )
    out = _run_isolated(code)
    assert out["warm"][0] is True
    assert out["stuck"][0] is False and out["stuck"][1] < answers.TIMEOUT_SECONDS - 1, out
    assert out["after"][0] is True, out


# ----------------------------------------------------------------------------- fast paths vs math-verify
# is_parsable and answers_agree decide simple answers (plain integers, \frac, \sqrt, polynomials,
# tuples/intervals/sets of such) without math-verify; their verdicts must be math-verify's own.
@functools.cache
def mv_parsable(answer: str) -> bool:
    """Plain math-verify: the answer parses to a math object, not only its string fallback."""
    import math_verify

    answer = answer.strip()
    parsed = math_verify.parse(
        f"${answer}$", extraction_config=answers.EXTRACTION, parsing_timeout=answers.TIMEOUT_SECONDS
    )
    return bool(answer) and any(not isinstance(x, str) for x in parsed)


@functools.cache
def mv_agree(pred: str, gold: str) -> bool:
    """Plain math-verify: the two bare answers are equal (at the eval metric's precision)."""
    import math_verify

    def parse(text: str) -> list:
        return math_verify.parse(
            f"${text.strip()}$", extraction_config=answers.EXTRACTION, parsing_timeout=answers.TIMEOUT_SECONDS
        )

    g, p = parse(gold), parse(pred)
    try:
        return bool(g and p and math_verify.verify(g, p, precision=answers.PRECISION))
    except Exception:
        return False


HAND_PICKED = [
    # integers, decimals
    *("0", "-0", "7", "007", "-12", "123456789012345678", "1,000", "3.14", "-0.5", ".5", "1e5", "10^{1000}"),
    # fractions, roots, pi, powers, polynomials
    *("\\frac{3}{7}", "\\dfrac{1}{2}", "\\tfrac{1}{2}", "\\frac12", "-\\frac{1}{2}", "\\frac{0}{0}", "\\frac{1}{0}"),
    *("2\\sqrt{3}", "\\sqrt{-4}", "\\frac{3\\pi}{4}", "\\sqrt{x}^{2}", "\\frac{1}{2}^{3}", "12^{34} - 5", "0^{-1}"),
    *("x^2 + 3x - 5", "x^23", "2 \\cdot 3", "2(3+x)", "3.5^{2}", "10^{-3}", "(9^{9})^{9}", "e^{x}", "\\pi"),
    # tuples, intervals, sets
    *("(3, 5)", "[3, 50)", "(1, 2]", "[5, 3)", "(x, 3)", "(1, 2, 3)", "\\{1, 2, x\\}", "\\{1\\}", "\\{ \\}"),
    *("(-\\infty, 3)", "(1, 2)^2", "-(1, 2)", "1, 2", "[2, I)", "[2, i)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    # shapes math-verify fails on (found by the random answers below): ``^e``, an interval end 1/0, 3 "ends"
    *("(a, b, c]", "[a, b, c)", "[a, b, c]", "(x, y, \\pi]", "(1, 2, 3]"),
    *("-\\pi^e", "\\{-\\pi^e,270\\}", "[0^{-14}, \\pi)", "[0^{-86}, -v^{-76})", "(\\frac{1}{0}, 3]", "[\\sqrt{-4}, 5)"),
    # text answers, names, equations, percentages
    *("x = 3", "5\\%", "\\text{odd}", "Monday", "ab", "a b", "f(2)", "x3", "2 3", "\\infty", "i", "E", "I"),
    # malformed
    *("", "   ", "???", "\\frac{", "\\frac{1}{", "\\sqrt{}", "(1, 2", "1 +", "^2", "{}", "\\frac{1}{2", "x^", "(,)"),
]
VARIABLES = "abcdefghjklmnopqrstuvwxyz"


def _simple(rng, depth: int, digits: bool) -> str:
    """A random answer of the shapes the fast path takes (and some it must leave to math-verify)."""
    big = str(rng.randint(100, 10**15 - 1))
    number = rng.choice(["0", "1", str(rng.randint(2, 99)), str(rng.randint(2, 999)), big, f"{rng.random() * 100:.3f}"])
    atoms = [number if digits else "\\pi", rng.choice(VARIABLES), "\\pi"]
    if depth < 1:
        inner = lambda: _expr(rng, depth + 1, digits)  # noqa: E731
        atoms += [f"\\frac{{{inner()}}}{{{inner()}}}", f"\\dfrac{{{inner()}}}{{{inner()}}}", f"\\sqrt{{{inner()}}}"]
        atoms.append(f"({inner()})")
    atom = rng.choice(atoms)
    if rng.random() < 0.3:
        variable = rng.choice(VARIABLES)
        exponents = [f"{{{variable}}}"] * 3 + [variable]  # ``x^{e}``, and rarely ``x^e``
        if digits:
            exponents += [str(rng.randint(0, 9)), f"{{{rng.randint(0, 999)}}}", f"{{-{rng.randint(1, 99)}}}"] * 2
        atom += "^" + rng.choice(exponents)
    return atom


def _expr(rng, depth: int = 0, digits: bool = True) -> str:
    terms = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        factors = [_simple(rng, depth, digits) for _ in range(rng.choice([1, 1, 2]))]
        terms.append(rng.choice(["", " \\cdot "]).join(factors))
    out = terms[0]
    for t in terms[1:]:
        out += rng.choice([" + ", " - ", "+", "-"]) + t
    return ("-" if rng.random() < 0.2 else "") + out


def _answers(seed: int, n: int) -> list[str]:
    """``n`` random answers: simple expressions, tuples/intervals/sets of them, and broken variants; a
    third without digits (math-verify finds a number in a text it cannot parse: that can hide a failure)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind, digits = rng.random(), rng.random() < 0.67
        if kind < 0.55:
            text = _expr(rng, 0, digits)
        else:
            parts = [_expr(rng, 1, digits) for _ in range(rng.randint(2, 3))]
            brackets = [("(", ")"), ("[", ")"), ("(", "]"), ("[", "]"), ("\\{", "\\}")]
            left, right = rng.choice(brackets if len(parts) == 2 else brackets[:3] + brackets[-1:] * 2)
            text = left + ", ".join(parts) + right
        if rng.random() < 0.25:  # malformed: a character dropped, or junk inserted
            i = rng.randrange(len(text))
            text = text[:i] + text[i + 1 :] if rng.random() < 0.5 else text[:i] + rng.choice("{}()^\\,a ") + text[i:]
        out.append(text)
    return out


def test_is_parsable_fast_path_matches_math_verify():
    """Every answer gets math-verify's verdict: hand-picked ones (integers, fractions, decimals, roots,
    intervals, sets, text, malformed) and random simple shapes with broken variants."""
    generated = _answers(seed=13, n=250)
    assert sum(map(answers._SimpleExpr.match, generated)) > 0.25 * len(generated)  # the fast path is exercised
    wrong = [a for a in HAND_PICKED + generated if answers.is_parsable(a) != mv_parsable(a)]
    assert not wrong, wrong


def test_answers_agree_fast_path_matches_math_verify():
    import random

    rng = random.Random(7)
    ints = ["0", "-0", "00", "7", "07", "-7", "33", "033", "123456789012345678", "123456789012345679", "1000"]
    ints += [str(rng.randint(-(10**6), 10**6)) for _ in range(10)]
    pairs = [(a, b) for a in ints for b in rng.sample(ints, 6)] + [(a, a) for a in ints]
    pairs += [(f" {a} ", b) for a, b in pairs[:10]]  # surrounding spaces
    pairs += [
        ("1,000", "1000"), ("1000.0", "1000"), ("0.5", "\\frac{1}{2}"), ("\\frac{2}{4}", "\\frac{1}{2}"),
        ("5", "\\frac{10}{2}"), ("2\\sqrt{2}", "\\sqrt{8}"), ("(1, 2)", "(1, 2)"), ("[1, 2)", "(1, 2)"),
        ("\\{1, 2\\}", "\\{2, 1\\}"), ("x^2 - 1", "(x-1)(x+1)"), ("\\text{odd}", "\\text{odd}"), ("???", "3"),
        ("", "1"), ("3", "-3"), ("1e5", "100000"), ("5\\%", "0.05"),
    ]  # fmt: skip
    wrong = [(p, g) for p, g in pairs if answers.answers_agree(p, g) != mv_agree(p, g)]
    assert not wrong, wrong


def test_filter_decisions_match_math_verify(tmp_path):
    """The rules pass on mixed rows (one box, several boxes, originals with gold answers): its
    math-verify reasons (unparsable_answer, boxed_disagree, gold_mismatch) are plain math-verify's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scalediff import filter as flt

    finals = HAND_PICKED + _answers(seed=5, n=25)
    others = ["3", "7", "\\frac{1}{2}", "0.5", "\\frac{3}{7}", "2\\sqrt{3}", "\\sqrt{12}", "(3, 5)", "x", "007"]
    golds = ["7", "007", "-7", "\\frac{6}{14}", "0.5", "\\sqrt{12}", "[3, 5)", "1,000", "x^2 + 3x - 5", "???"]
    rows, pool, expected = [], [], {}

    def add(pid: str, origin: str, boxes: list[str], gold: str | None = None) -> None:
        shown = " ".join(f"$\\boxed{{{b}}}$" for b in boxes)
        letters = pid[0] + "".join(chr(97 + int(c)) for c in pid[2:])  # distinct problems, no digits in common
        problem = f"Find the value of the quantity named {letters} in the puzzle about {letters} apples."
        rows.append(
            {
                "id": pid,
                "sample": 0,
                "problem": problem,
                "origin": origin,
                "source": "mixed",
                "completion": f"<think>\nWork it out carefully, step by step.\n</think>\n\nSo {shown}.",
                "finish_reason": "stop",
                "prompt_tokens": 20,
                "completion_tokens": 40,
                "answer": None,
            }
        )
        last = boxes[-1].strip()
        reasons = set()
        if last:
            if not all(b.strip() == last or mv_agree(b, last) for b in boxes[:-1]):
                reasons.add("boxed_disagree")
            if not mv_parsable(last):
                reasons.add("unparsable_answer")
        if gold is not None:
            pool.append({"id": pid, "problem": problem, "solution": None, "answer": gold, "origin": "original"})
            pool[-1]["source"] = "pool"
            if last and last != gold.strip() and not mv_agree(last, gold):
                reasons.add("gold_mismatch")
        expected[pid] = reasons

    for i, final in enumerate(finals):
        if not final.strip() or answers.extract_boxed(f"\\boxed{{{final}}}") != [final]:
            continue  # an empty or unbalanced box is no_boxed or another box: not a math-verify decision
        add(f"g-{i:03d}", "generated", [final])
        add(f"m-{i:03d}", "generated", [others[i % len(others)], final])
        add(f"p-{i:03d}", "original", [final], gold=golds[i % len(golds)])
    integers = [("007", "7"), ("-0", "0"), ("12", "13"), ("033", "33"), ("5", "-5"), ("1,000", "1000")]
    for j, (a, b) in enumerate(integers):
        add(f"n-{j:03d}", "generated", [a, b])  # two integers: agreeing or not by value, not by text
        add(f"o-{j:03d}", "original", [a], gold=b)
    solutions = tmp_path / "solutions.parquet"
    pq.write_table(pa.Table.from_pylist(rows), solutions)
    pq.write_table(pa.Table.from_pylist(pool), tmp_path / "pool.parquet")
    cfg = {"min_solution_tokens": 8, "dedup": {"enabled": False}, "model_based": {"enabled": False}}
    bench = {"aime24": {"path": str(Path(__file__).resolve().parents[1] / "config/data/benchmarks/aime24.jsonl")}}
    flt.run_rules(
        str(solutions),
        str(tmp_path / "pool.parquet"),
        bench,
        cfg,
        str(tmp_path / "cand.parquet"),
        str(tmp_path / "rr.parquet"),
        str(tmp_path / "rs.json"),
    )
    math_reasons = {"boxed_disagree", "unparsable_answer", "gold_mismatch"}
    got = {pid: set() for pid in expected}
    for r in pq.read_table(tmp_path / "rr.parquet").to_pylist():
        assert r["status"] == "rejected" and set(r["reasons"].split(",")) <= math_reasons, r
        got[r["id"]] = set(r["reasons"].split(","))
    kept = set(pq.read_table(tmp_path / "cand.parquet", columns=["id"]).column("id").to_pylist())
    assert kept == {pid for pid, reasons in got.items() if not reasons}
    assert len(kept) > len(got) / 4 and sum(bool(r) for r in got.values()) > 20  # both outcomes are covered
    wrong = {pid: (got[pid], want) for pid, want in expected.items() if got[pid] != want}
    assert not wrong, wrong
