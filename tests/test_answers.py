import os
import signal
import subprocess
import sys
import threading

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
    t.join()
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
