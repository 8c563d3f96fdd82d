"""Final-answer extraction and checking, on top of math-verify.

Two rules from SPEC §6 live here so every stage applies them the same way:
- gold answers are wrapped as ``$...$`` before parsing (raw ``2^{99}`` parses as ``2``);
- a completion's answer is read after the last ``</think>`` (the reasoning may box drafts).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from typing import Any

import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PRECISION = 5  # decimal places for numeric equality, as in the eval metric (SPEC §6)
TIMEOUT_SECONDS = 5

# LaTeX first with \boxed{} at top priority, then plain expressions.
EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _thread_aware(timeout: Callable[[int], Callable]) -> Callable[[int], Callable]:
    """math-verify 0.5.2 times out with ``signal.alarm``, which raises off the main thread.

    Its parser swallows that error and falls back to a regex parse (``$2^{99}$`` -> ``2``) and
    ``verify`` returns False, so answers checked from a worker thread are silently wrong. Off the
    main thread we run without a timeout instead; on the main thread nothing changes.
    """

    def patched(timeout_seconds: int = 10) -> Callable:
        def decorator(func: Callable) -> Callable:
            guarded = timeout(timeout_seconds)(func)

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if threading.current_thread() is threading.main_thread():
                    return guarded(*args, **kwargs)
                return func(*args, **kwargs)

            return wrapper

        return decorator

    patched._scalediff_thread_aware = True  # type: ignore[attr-defined]
    return patched


# Both modules look ``timeout`` up at call time, so replacing the module global is enough.
for _module in (math_verify.parser, math_verify.grader):
    if not getattr(_module.timeout, "_scalediff_thread_aware", False):
        _module.timeout = _thread_aware(_module.timeout)


def final_segment(completion: str) -> str:
    """The text after the last ``</think>``, or the whole text when there is none."""
    head, sep, tail = completion.rpartition(THINK_CLOSE)
    return tail if sep else completion


def extract_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` in order, with balanced braces; unclosed boxes are skipped."""
    out: list[str] = []
    marker = "\\boxed{"
    start = text.find(marker)
    while start != -1:
        i = start + len(marker)
        depth = 1
        j = i
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        if depth:
            break  # truncated completion: no closing brace anywhere after this box
        out.append(text[i : j - 1])
        start = text.find(marker, j)
    return out


def final_answer(completion: str) -> str | None:
    """The last boxed answer after the reasoning, or None."""
    boxed = extract_boxed(final_segment(completion))
    return boxed[-1].strip() if boxed else None


def wrap_gold(answer: str) -> str:
    """``$answer$``: math-verify only parses a gold answer reliably inside a math environment."""
    return f"${answer.strip()}$"


def parse(text: str) -> list:
    """math-verify parse (LaTeX with boxed first, then expressions); ``[]`` when nothing parses."""
    try:
        return math_verify.parser.parse(text, extraction_config=EXTRACTION, parsing_timeout=TIMEOUT_SECONDS)
    except Exception:  # math-verify raises on a few pathological inputs; treat as unparsable
        return []


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@functools.lru_cache(maxsize=1 << 16)
def is_parsable(answer: str) -> bool:
    """math-verify turns the answer into a math object, not only its raw-string fallback.

    For junk such as ``???`` or ``\\frac{`` math-verify returns just the string itself. Plain numbers
    (most competition answers) always parse, so they skip the symbolic work; repeated answers hit
    a bounded cache (math-verify costs milliseconds per call).
    """
    if _PLAIN_NUMBER.fullmatch(answer.strip()):
        return True
    return bool(answer.strip()) and any(not isinstance(x, str) for x in parse(wrap_gold(answer)))


def _verify(gold: list, pred: list) -> bool:
    if not gold or not pred:
        return False
    try:
        return bool(math_verify.grader.verify(gold, pred, precision=PRECISION, timeout_seconds=TIMEOUT_SECONDS))
    except Exception:
        return False


def answers_agree(pred: str, gold: str) -> bool:
    """Whether two final answers (bare LaTeX, no ``$``/box) are mathematically equal."""
    return _verify(parse(wrap_gold(gold)), parse(wrap_gold(pred)))


def score_prediction(completion: str, gold: str) -> bool:
    """Whether a model completion's final answer matches ``gold`` (a bare answer string)."""
    return _verify(parse(wrap_gold(gold)), parse(final_segment(completion)))
