"""Final-answer extraction and checking, on top of math-verify.

Two rules from SPEC §6 live here so every stage applies them the same way:
- gold answers are wrapped as ``$...$`` before parsing (raw ``2^{99}`` parses as ``2``);
- a completion's answer is read after the last ``</think>`` (the reasoning may box drafts).

Timeouts: math-verify bounds each parse/compare with ``signal.alarm`` (TIMEOUT_SECONDS), which only
works on the main thread. A pathological answer such as ``9^{9^{9^{9}}}`` makes sympy compute a
huge power in C while holding the GIL; off the main thread nothing can interrupt that and the whole
process hangs. So off the main thread every check runs in a per-thread child process
(``_Sandbox``), on the child's main thread with the same alarms and a hard deadline on top
(CALL_DEADLINE: past it the child is killed and the check fails). The filter's worker processes
and the model-based filter check on their main thread and never pay for the child.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PRECISION = 5  # decimal places for numeric equality, as in the eval metric (SPEC §6)
TIMEOUT_SECONDS = 5
# Hard limit for one check run off the main thread: a check makes at most two parses and one
# comparison, each bounded by TIMEOUT_SECONDS when signals get through.
CALL_DEADLINE = 4 * TIMEOUT_SECONDS
SANDBOX_START_SECONDS = 120  # the child imports sympy + math-verify (seconds on a busy machine)

# LaTeX first with \boxed{} at top priority, then plain expressions.
EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

_timeouts = 0  # math-verify timeouts seen in this process (the sandbox child reports whether one hit)


def _thread_aware(timeout: Callable[[int], Callable]) -> Callable[[int], Callable]:
    """math-verify 0.5.2 times out with ``signal.alarm``, which raises off the main thread.

    Its parser swallows that error and falls back to a regex parse (``$2^{99}$`` -> ``2``) and
    ``verify`` returns False, so answers checked from a worker thread are silently wrong. Off the
    main thread we run without a timeout instead (``parse`` only does so after the sandbox showed the
    same parse ends in time); on the main thread timeouts are counted and otherwise unchanged.
    """

    def patched(timeout_seconds: int = 10) -> Callable:
        def decorator(func: Callable) -> Callable:
            guarded = timeout(timeout_seconds)(func)

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                global _timeouts
                if threading.current_thread() is threading.main_thread():
                    try:
                        return guarded(*args, **kwargs)
                    except TimeoutError:
                        _timeouts += 1
                        raise
                return func(*args, **kwargs)

            return wrapper

        return decorator

    patched._scalediff_thread_aware = True  # type: ignore[attr-defined]
    return patched


# Both modules look ``timeout`` up at call time, so replacing the module global is enough.
for _module in (math_verify.parser, math_verify.grader):
    if not getattr(_module.timeout, "_scalediff_thread_aware", False):
        _module.timeout = _thread_aware(_module.timeout)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------- sandbox (off the main thread)
def _serve(read_fd: int, write_fd: int) -> None:
    """The sandbox child: answer ``(name, args)`` requests with ``_LOCAL[name](*args)`` until EOF."""
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    replies.send("ready")
    while True:
        try:
            name, args = requests.recv()
        except EOFError:  # the parent is gone or closed the sandbox
            return
        replies.send(_LOCAL[name](*args))


def _kill(proc: subprocess.Popen, *conns: Connection) -> None:
    for conn in conns:
        conn.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class _Sandbox:
    """One child process that runs checks for one thread; killed and restarted when a check overruns."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            f"import sys; sys.path.insert(0, {src!r}); from scalediff.answers import _serve; _serve({req_r}, {rep_w})"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests, self._replies = Connection(req_w, readable=False), Connection(rep_r, writable=False)
        # Kill the child when this thread's sandbox is dropped (thread exit) or at interpreter exit.
        self._finalizer = weakref.finalize(self, _kill, self._proc, self._requests, self._replies)
        if not (self._replies.poll(SANDBOX_START_SECONDS) and self._replies.recv() == "ready"):
            self.close()
            raise RuntimeError("math-verify sandbox process did not start")

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills the child once
        self._proc = self._finalizer = None

    def call(self, name: str, args: tuple, default: Any) -> Any:
        """``_LOCAL[name](*args)`` in the child, or ``default`` when it overruns CALL_DEADLINE or dies."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
        try:
            self._requests.send((name, args))
            if self._replies.poll(CALL_DEADLINE):
                return self._replies.recv()
        except (EOFError, OSError):
            pass
        self.close()  # stuck in sympy (or dead): the next call starts a fresh child
        return default


_sandboxes = threading.local()


def _in_sandbox(name: str, args: tuple, default: Any) -> Any:
    sandbox = getattr(_sandboxes, "sandbox", None)
    if sandbox is None:
        sandbox = _sandboxes.sandbox = _Sandbox()
    return sandbox.call(name, args, default)


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


def _parse(text: str) -> list:
    try:
        return math_verify.parser.parse(text, extraction_config=EXTRACTION, parsing_timeout=TIMEOUT_SECONDS)
    except Exception:  # math-verify raises on a few pathological inputs; treat as unparsable
        return []


def _parse_ends_in_time(text: str) -> bool:
    before = _timeouts
    _parse(text)
    return _timeouts == before


def parse(text: str) -> list:
    """math-verify parse (LaTeX with boxed first, then expressions); ``[]`` when nothing parses.

    Off the main thread the parse is first tried in the sandbox: only when it ends there without a
    timeout is it repeated here (sympy objects do not survive pickling unchanged), else ``[]``.
    """
    if _on_main_thread():
        return _parse(text)
    return _parse(text) if _in_sandbox("parse_ends_in_time", (text,), False) else []


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


# ---------------------------------------------------------------------------- exact fast paths
# math-verify spends milliseconds per answer in an ANTLR parser written in Python (~3 ms per row of the
# filter, most of a worker's time). Answers of a few simple shapes get math-verify's verdict without it:
# every shape below parses, and compares, the same way whatever its numbers, with no sympy work that
# could time out; anything else goes to math-verify. tests/test_answers.py checks both paths agree.
_SIMPLE_MAX_CHARS = 120
# numbers (<= 15 digits, so no power below gets big), lower-case one-letter variables (not ``i``: it
# makes math-verify treat the answer as complex), a few commands, operators and brackets
_SIMPLE_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d{1,15}(?:\.\d{1,15})?)|(?P<var>[a-hj-z])(?![a-zA-Z])|(?P<cmd>\\(?:d?frac|sqrt|pi|cdot)"
    r"(?![a-zA-Z]))|(?P<op>\\[{}]|[-+^{}()\[\],]))"
)


class _SimpleExpr:
    """Recogniser of simple answers: sums and implicit products of numbers, one-letter variables, ``\\pi``,
    ``\\frac``/``\\dfrac``, ``\\sqrt``, brackets and powers with a small exponent (one digit, ``{x}`` or
    ``{[-]ddd}``; never a power of a power, so no tower), alone or as a tuple/interval/set of such (an
    interval's ends stricter: see ``real``).

    ``match(text)`` is True only when all of ``text`` is such an answer; math-verify parses each of
    them into a sympy object (never only its string fallback) in well under its timeout.
    """

    def __init__(self, text: str):
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _SIMPLE_TOKEN.match(text, pos)
            if m is None:
                if text[pos:].strip():
                    raise ValueError(text)
                break
            self.tokens.append((m.lastgroup or "", m.group(m.lastgroup or 0)))
            pos = m.end()
        self.i = 0
        # inside an interval's ends: only real, finite values (sympy's Interval raises on ``1/0`` or
        # ``\sqrt{-4}``): no negative or variable exponent, ``\frac`` over a non-zero number, ``\sqrt`` of one
        self.real = False

    @classmethod
    def match(cls, text: str) -> bool:
        if len(text) > _SIMPLE_MAX_CHARS:
            return False
        try:
            parser = cls(text)
            parser.top()
            return parser.i == len(parser.tokens)
        except (ValueError, IndexError):
            return False

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("", "")

    def take(self, value: str) -> None:
        if self.peek()[1] != value:
            raise ValueError(value)
        self.i += 1

    def top(self) -> None:
        """An expression, or a tuple/interval ``(a, b]`` or set ``\\{a, b\\}`` of two or more."""
        opening = self.peek()[1]
        if opening in ("(", "[", "\\{"):
            start = self.i
            self.i += 1
            self.real = opening != "\\{"  # two ends in brackets are an interval
            self.expr()
            if self.peek()[1] == ",":
                items = 1
                while self.peek()[1] == ",":
                    self.i += 1
                    self.expr()
                    items += 1
                closing = self.peek()[1]
                # an interval has two ends: ``(a, b, c]`` does not parse, ``(a, b, c)`` is a tuple
                if opening == "\\{":
                    allowed: tuple[str, ...] = ("\\}",)
                elif items == 2:
                    allowed = (")", "]")
                else:
                    allowed = (")",) if opening == "(" else ()
                if closing not in allowed:
                    raise ValueError(closing)
                self.i += 1
                return
            self.i, self.real = start, False  # a bracketed expression: parsed as one below
        self.expr()

    def expr(self) -> None:
        if self.peek()[1] == "-":
            self.i += 1
        self.term()
        while self.peek()[1] in ("+", "-"):
            self.i += 1
            self.term()

    def term(self) -> None:
        previous = self.factor()
        while True:
            kind, value = self.peek()
            if value == "\\cdot":
                self.i += 1
                previous = self.factor()
            elif kind in ("num", "var") or value in ("\\frac", "\\dfrac", "\\sqrt", "\\pi", "("):
                if kind == "num" or kind == previous == "var":
                    raise ValueError(value)  # a number only leads a product (``x 3``, ``2 3``); ``a b``: a name?
                if value == "(" and previous == "var":
                    raise ValueError(value)  # ``f(2)``: a function call
                previous = self.factor()
            else:
                return

    def factor(self) -> str:
        """One factor; returns its kind for ``term``: num, var, power or other."""
        kind, value = self.peek()
        self.i += 1
        powered = False  # the base holds a power already: no power on top of it
        if kind in ("num", "var") or value == "\\pi":
            pass
        elif value in ("\\frac", "\\dfrac"):
            powered = self.group()
            if self.real:
                self.number("{", "}", nonzero=True)
            else:
                powered |= self.group()
        elif value == "\\sqrt":
            if self.real:
                self.number("{", "}")
            else:
                powered = self.group()
        elif value == "(":
            powered = self.inner(")")
        else:
            raise ValueError(value)
        if self.peek()[1] != "^":
            return kind if kind in ("num", "var") else "other"
        if powered:
            raise ValueError("^")
        self.i += 1
        ekind, evalue = self.peek()
        self.i += 1
        if ekind == "num" and len(evalue) == 1:  # ``x^2``; not ``x^e``: math-verify cannot parse that one
            return "power"
        if evalue != "{":
            raise ValueError(evalue)
        if self.peek()[1] == "-" and not self.real:
            self.i += 1
        ekind, evalue = self.peek()
        self.i += 1
        if not (ekind == "var" and not self.real or ekind == "num" and evalue.isdigit() and len(evalue) <= 3):
            raise ValueError(evalue)
        self.take("}")
        return "power"

    def number(self, opening: str, closing: str, nonzero: bool = False) -> None:
        """``{n}``: one number (not zero when ``nonzero``)."""
        self.take(opening)
        kind, value = self.peek()
        if kind != "num" or nonzero and not value.strip("0."):
            raise ValueError(value)
        self.i += 1
        self.take(closing)

    def group(self) -> bool:
        self.take("{")
        return self.inner("}")

    def inner(self, closing: str) -> bool:
        """An expression up to ``closing``; whether it holds a power."""
        start = self.i
        self.expr()
        self.take(closing)
        return any(value == "^" for _, value in self.tokens[start : self.i])


_INTEGER = re.compile(r"-?\d{1,18}")


def _is_parsable(answer: str) -> bool:
    return bool(answer.strip()) and any(not isinstance(x, str) for x in _parse(wrap_gold(answer)))


@functools.lru_cache(maxsize=1 << 16)
def is_parsable(answer: str) -> bool:
    """math-verify turns the answer into a math object, not only its raw-string fallback.

    For junk such as ``???`` or ``\\frac{`` math-verify returns just the string itself. Plain numbers
    (most competition answers) and other simple shapes (``_SimpleExpr``: ``\\frac{3}{7}``, ``2\\sqrt{5}``,
    ``x^2 + 3x - 1``, ``[2, 7)`` ...) always parse, so they skip the symbolic work; repeated answers hit
    a bounded cache (math-verify costs milliseconds per call).
    """
    stripped = answer.strip()
    if _PLAIN_NUMBER.fullmatch(stripped) or _SimpleExpr.match(stripped):
        return True
    return _is_parsable(answer) if _on_main_thread() else _in_sandbox("is_parsable", (answer,), False)


def _verify(gold: list, pred: list) -> bool:
    if not gold or not pred:
        return False
    try:
        return bool(math_verify.grader.verify(gold, pred, precision=PRECISION, timeout_seconds=TIMEOUT_SECONDS))
    except Exception:
        return False


def _answers_agree(pred: str, gold: str) -> bool:
    return _verify(_parse(wrap_gold(gold)), _parse(wrap_gold(pred)))


def _score_prediction(completion: str, gold: str) -> bool:
    return _verify(_parse(wrap_gold(gold)), _parse(final_segment(completion)))


def answers_agree(pred: str, gold: str) -> bool:
    """Whether two final answers (bare LaTeX, no ``$``/box) are mathematically equal.

    Two plain integers (``-?\\d{1,18}``: math-verify reads them exactly, leading zeros and ``-0`` too) are
    compared here, without math-verify.
    """
    p, g = pred.strip(), gold.strip()
    if _INTEGER.fullmatch(p) and _INTEGER.fullmatch(g):
        return int(p) == int(g)
    if _on_main_thread():
        return _answers_agree(pred, gold)
    return _in_sandbox("answers_agree", (pred, gold), False)


def score_prediction(completion: str, gold: str) -> bool:
    """Whether a model completion's final answer matches ``gold`` (a bare answer string)."""
    if _on_main_thread():
        return _score_prediction(completion, gold)
    return _in_sandbox("score_prediction", (completion, gold), False)


# What the sandbox child runs (on its main thread, so with math-verify's timeouts).
_LOCAL: dict[str, Callable[..., Any]] = {
    "parse_ends_in_time": _parse_ends_in_time,
    "is_parsable": _is_parsable,
    "answers_agree": _answers_agree,
    "score_prediction": _score_prediction,
}
