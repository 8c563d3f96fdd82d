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
