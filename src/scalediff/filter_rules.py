"""Rule-based filter checks: one function per reason code, all thresholds from ``filter`` config.

Three groups, applied to one (problem, teacher solution) row each:

- *quarantine* (``validate_row``): the row itself is malformed (missing field, wrong type, NaN,
  oversized or invalid text). Such rows are set aside with the field and reason, never crash the
  stage and never count as a filtering decision.
- *problem* checks: the problem text is not a problem (empty, already a solution, several
  questions) or is not English.
- *solution* checks: truncated, no final ``\\boxed{}``, several disagreeing boxes, unparsable
  answer, too short/long, repetition loops, non-English/mixed script.

Every check returns reason codes; the caller records all of them and attributes the row to the
first in ``REASON_ORDER``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from scalediff import answers

# Funnel order: a row is attributed to the first reason it hits in this order.
QUARANTINE_REASONS = (
    "missing_field",
    "bad_type",
    "not_finite",
    "bad_value",
    "oversized",
    "invalid_text",
    "duplicate_key",
)
PROBLEM_REASONS = ("problem_empty", "problem_is_solution", "problem_multi_question", "problem_non_english")
SOLUTION_REASONS = (
    "truncated",
    "no_boxed",
    "boxed_disagree",
    "unparsable_answer",
    "too_short",
    "too_long",
    "repetition",
    "solution_non_english",
    "gold_mismatch",
)
DECONTAM_REASONS = ("contaminated_exact", "contaminated", "contaminated_numbers")
DEDUP_REASONS = ("duplicate_of_original", "duplicate", "near_duplicate_of_original", "near_duplicate")
MODEL_REASONS = ("student_solved",)
VERIFY_REASONS = ("low_agreement", "minority_answer")  # scalediff.verify, applied by filter gather
OTHER_REASONS = ("superseded_by_distilled",)

FILTER_OF_REASON = {
    **dict.fromkeys(QUARANTINE_REASONS, "quarantine"),
    **dict.fromkeys(PROBLEM_REASONS, "problem"),
    **dict.fromkeys(SOLUTION_REASONS, "solution"),
    **dict.fromkeys(DECONTAM_REASONS, "decontamination"),
    **dict.fromkeys(DEDUP_REASONS, "dedup"),
    **dict.fromkeys(VERIFY_REASONS, "verification"),
    **dict.fromkeys(MODEL_REASONS, "model_based"),
    **dict.fromkeys(OTHER_REASONS, "superseded"),
}
FILTER_ORDER = (
    "quarantine",
    "superseded",
    "problem",
    "solution",
    "decontamination",
    "dedup",
    "verification",
    "model_based",
)

# Defaults for every key the filter reads beyond the ones the schema requires: config.yaml states
# them all explicitly; older configs (or paper.yaml) without them get these values.
DEFAULTS: dict[str, Any] = {
    "min_solution_tokens": 8,
    "max_solution_tokens": 32768,
    "require_think_close": True,
    "repetition": {"ngram": 8, "max_ratio": 0.5, "min_ngrams": 20},
    "max_foreign_letter_fraction": 0.01,
    "max_field_chars": 1_000_000,
    "problem": {
        "min_chars": 10,
        # regexes (case-insensitive): a problem text containing one is (part of) a solution
        "solution_markers": [
            r"\\boxed\s*\{",
            r"(?:therefore|thus|hence|so),? the (?:final )?answer is",
            r"final answer\s*:",
            r"</?think>",
            r"^\s*solution\s*:",
        ],
        "question_starts": [
            "find",
            "compute",
            "determine",
            "calculate",
            "evaluate",
            "what",
            "how",
            "which",
            "prove",
            "show",
            "simplify",
            "solve",
        ],
        "max_questions": 1,
        "max_parts": 1,
    },
    "original": {"solution_rules": True, "check_gold": True, "decontaminate": "report"},
    "dedup": {"enabled": True, "ngram": 3, "num_perm": 128, "threshold": 0.8, "seed": 1},
    "decontamination": {
        "ngram": 8,
        "min_share": 0.4,
        "min_contained": 0.6,
        "boilerplate_df": 2,
        "min_words": 5,
        "numbers_changed": "report",
    },
    "model_based": {
        "enabled": True,
        "shards": 1,
        "k": 1,
        "rule": "any",
        "instruction": "",
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 32768,
    },
    # the dataset card's Hub metadata (the card's YAML header); the licence must be checked against the
    # pool's and the teacher's terms, so the default is the Hub's "other" until a config says more
    "card": {
        "license": "other",
        "pretty_name": "ScaleDiff-Math (this run)",
        "tags": ["math", "reasoning", "synthetic", "chain-of-thought", "scalediff"],
    },
}


def with_defaults(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``filter`` config with every missing key (one level of nesting) filled from DEFAULTS."""
    cfg = dict(cfg or {})
    out: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        value = cfg.get(key, default)
        if isinstance(default, dict) and isinstance(value, Mapping):
            value = {**default, **value}
        out[key] = value
    for key, value in cfg.items():
        out.setdefault(key, value)
    return out


# ---------------------------------------------------------------------------- quarantine
REQUIRED_SOLUTION_FIELDS = {
    "id": str,
    "sample": int,
    "problem": str,
    "origin": str,
    "source": str,
    "completion": str,
    "finish_reason": str,
    "completion_tokens": int,
}
REQUIRED_POOL_FIELDS = {"id": str, "problem": str, "solution": str, "origin": str, "source": str}
OPTIONAL_FIELDS = {"answer": str, "prompt_tokens": int}
ORIGINS = ("original", "generated")
POOL_ORIGINS = ("original",)  # a pool row claiming ``generated`` would skip every generated-data filter


_INVALID_TEXT = re.compile("[\x00\ud800-\udfff]")  # NUL bytes and lone surrogates


def _check_value(name: str, value: Any, kind: type, max_chars: int) -> str | None:
    if value is None:
        return "missing_field"
    if isinstance(value, float) and not math.isfinite(value):
        return "not_finite"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "bad_type"
        if isinstance(value, float) and not value.is_integer():
            return "bad_type"
        if value < 0:
            return "bad_value"
        return None
    if not isinstance(value, str):
        return "bad_type"
    if len(value) > max_chars:
        return "oversized"
    if ("\x00" in value) if value.isascii() else _INVALID_TEXT.search(value):  # ASCII has no surrogates
        return "invalid_text"
    return None


def validate_row(
    row: Mapping[str, Any], required: Mapping[str, type], max_chars: int, origins: tuple[str, ...] = ORIGINS
) -> list[tuple[str, str]]:
    """``[(reason, field), ...]`` for a malformed row; empty when the row is usable.

    ``row`` may carry ``_invalid`` (fields whose bytes were not UTF-8, e.g. a lone surrogate, set by the
    reader). An ``origin`` outside ``origins`` is ``bad_value``.
    """
    problems: list[tuple[str, str]] = [("invalid_text", f) for f in row.get("_invalid", ())]
    bad = {f for _, f in problems}
    for name, kind in {**required, **OPTIONAL_FIELDS}.items():
        if name in bad:
            continue
        value = row.get(name)
        if value is None and name not in required:
            continue
        reason = _check_value(name, value, kind, max_chars)
        if reason:
            problems.append((reason, name))
    if not problems:
        if row["origin"] not in origins:
            problems.append(("bad_value", "origin"))
        elif not row["id"].strip():
            problems.append(("missing_field", "id"))
    return problems


# ---------------------------------------------------------------------------- text statistics
_WORD = re.compile(r"[^\W_]+")
# For ASCII text, [^\W_] is exactly [A-Za-z0-9]: one bytes.translate (lower-case letters, every other
# byte to a space) and a split give the same words ~3.5x faster than the Unicode regex.
_ASCII_WORD_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 or 48 <= c <= 57 else 32 for c in range(256))


def words(text: str) -> list[str]:
    """Lower-case alphanumeric runs: the token unit of every n-gram statistic in the filter."""
    return _WORD.findall(text.lower())


def _word_hashes(text: str) -> np.ndarray:
    """64-bit hashes of ``words(text)``, in order (the words themselves are never needed)."""
    toks = text.encode().translate(_ASCII_WORD_TABLE).split() if text.isascii() else words(text)
    return np.fromiter(map(hash, toks), dtype=np.int64, count=len(toks)).view(np.uint64)


def repeated_ngram_ratio(text: str, n: int) -> tuple[float, int]:
    """(share of word n-grams that repeat an earlier one, number of n-grams).

    A reasoning loop ("wait, let me recompute ..." a hundred times) pushes this towards 1;
    ordinary prose and derivations stay well below 0.3 for n >= 6.

    Counted on 64-bit n-gram hashes in numpy (FNV-style mix of the word hashes, then sort): ~4x
    faster than a Counter of word tuples on 15K-token traces; a hash collision (~total^2 / 2^64)
    could only lower the count by one.
    """
    h = _word_hashes(text)
    total = len(h) - n + 1
    if total <= 0:
        return 0.0, 0
    grams = h[:total].copy()
    for k in range(1, n):
        grams *= np.uint64(1099511628211)
        grams ^= h[k : k + total]
    grams.sort()
    distinct = 1 + int(np.count_nonzero(grams[1:] != grams[:-1]))
    return 1.0 - distinct / total, total


# Letters of the Latin and Greek alphabets (with extensions, combining marks, super/subscripts),
# letterlike symbols (ℝ, ℓ, ℏ) and mathematical alphanumerics are "English/math"; any other letter
# (CJK, Cyrillic, Arabic, ...) is foreign. Regexes keep this C-speed on 100K-character traces.
_ALLOWED = "\u0000-\u03ff\u1d00-\u1dbf\u1e00-\u1fff\u2070-\u209f\u2100-\u214f\U0001d400-\U0001d7ff"
_LETTER = re.compile(r"[^\W\d_]")
_FOREIGN_LETTER = re.compile(rf"[^\W\d_{_ALLOWED}]")


def foreign_letter_fraction(text: str) -> float:
    """Share of letters outside Latin/Greek/math alphabets (CJK, Cyrillic, Arabic, ...)."""
    if text.isascii():  # O(1) in CPython: the string's kind is known
        return 0.0
    foreign = len(_FOREIGN_LETTER.findall(text))
    if not foreign:
        return 0.0
    return foreign / len(_LETTER.findall(text))


# ---------------------------------------------------------------------------- problem checks
_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]|\\\(.*?\\\)", re.S)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
# Sub-question markers: (a) (b) ..., a) b) ..., (1) (2) ...; upper-case (A)..(E) are answer options.
_PART = re.compile(r"(?:^|\s)\(?(?:[a-h]|[1-9])\)\s")


def _is_question(sentence: str, starts: tuple[str, ...]) -> bool:
    s = sentence.strip()
    if not s or "your answer" in s.lower():  # "Express your answer as ..." is a format instruction
        return False
    return s.endswith("?") or (words(s) or [""])[0] in starts


def count_questions(problem: str, question_starts: list[str]) -> tuple[int, int]:
    """(question sentences, enumerated parts that ask something) in a problem, math masked out.

    A question sentence ends in ``?`` or starts with an imperative/question word (``find``,
    ``compute``, ``what`` ...); answer-format instructions ("your answer ...") do not count. A
    part is a ``(a)``/``b)``/``(2)`` segment containing a question, so enumerated conditions
    ("(i) n is odd") and answer options ("(A) Line") are not parts.
    """
    text = _MATH.sub(" M ", problem)
    starts = tuple(w.lower() for w in question_starts)
    questions = sum(_is_question(s, starts) for s in _SENTENCE_END.split(text.strip()))
    segments = _PART.split(" " + text)[1:]
    parts = sum(any(_is_question(s, starts) for s in _SENTENCE_END.split(seg.strip())) for seg in segments)
    return questions, parts


def problem_reasons(problem: str, cfg: Mapping[str, Any]) -> list[str]:
    pcfg = cfg["problem"]
    stripped = problem.strip()
    if len(stripped) < pcfg["min_chars"]:
        return ["problem_empty"]
    reasons = []
    if any(re.search(m, stripped, re.I) for m in pcfg["solution_markers"]):
        reasons.append("problem_is_solution")
    questions, parts = count_questions(stripped, pcfg["question_starts"])
    if questions > pcfg["max_questions"] or parts > pcfg["max_parts"]:
        reasons.append("problem_multi_question")
    if foreign_letter_fraction(stripped) > cfg["max_foreign_letter_fraction"]:
        reasons.append("problem_non_english")
    return reasons


# ---------------------------------------------------------------------------- solution checks
def boxed_agree(boxes: list[str]) -> bool:
    """Whether every boxed answer equals the last one (string-equal or math-verify-equal)."""
    last = boxes[-1].strip()
    return all(b.strip() == last or answers.answers_agree(b, last) for b in boxes[:-1])


def text_reasons(row: Mapping[str, Any], cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(reason codes, boxed answers of the final segment) from the solution text alone.

    Pure string work (lengths, truncation, boxes, repetition, script); the math-verify checks of the
    answers are ``answer_reasons`` so each can be measured and parallelised on its own.
    """
    completion: str = row["completion"]
    reasons: list[str] = []
    if row["finish_reason"] == "length" or (cfg["require_think_close"] and answers.THINK_CLOSE not in completion):
        reasons.append("truncated")
    boxes = answers.extract_boxed(answers.final_segment(completion))
    if not boxes or not boxes[-1].strip():
        reasons.append("no_boxed")
    tokens = int(row["completion_tokens"])
    if tokens < cfg["min_solution_tokens"]:
        reasons.append("too_short")
    if tokens > cfg["max_solution_tokens"]:
        reasons.append("too_long")
    rep = cfg["repetition"]
    ratio, n_grams = repeated_ngram_ratio(completion, rep["ngram"])
    if n_grams >= rep["min_ngrams"] and ratio > rep["max_ratio"]:
        reasons.append("repetition")
    if foreign_letter_fraction(completion) > cfg["max_foreign_letter_fraction"]:
        reasons.append("solution_non_english")
    return reasons, boxes


def answer_reasons(boxes: list[str]) -> list[str]:
    """math-verify checks of the boxed answers: several that disagree, or a final one it cannot parse."""
    if not boxes or not boxes[-1].strip():
        return []  # already ``no_boxed``
    reasons = []
    if len(boxes) > 1 and not boxed_agree(boxes):
        reasons.append("boxed_disagree")
    if not answers.is_parsable(boxes[-1].strip()):
        reasons.append("unparsable_answer")
    return reasons


def solution_reasons(row: Mapping[str, Any], cfg: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """(reason codes in ``SOLUTION_REASONS`` order, final answer) for one teacher completion."""
    reasons, boxes = text_reasons(row, cfg)
    reasons += answer_reasons(boxes)
    answer = boxes[-1].strip() if boxes else None
    return sorted(reasons, key=SOLUTION_REASONS.index), answer or None


def gold_mismatch(answer: str | None, gold: Any) -> bool:
    """An original problem's teacher answer disagrees with the pool's gold answer (when there is one)."""
    if answer is None or not isinstance(gold, str) or not gold.strip():
        return False
    return not (answer.strip() == gold.strip() or answers.answers_agree(answer, gold))
