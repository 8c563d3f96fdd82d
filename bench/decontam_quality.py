"""Benchmark: decontamination quality on the repo's data -- false positives and recall of planted copies.

Prints a table (not a test; ``tests/test_decontam.py`` asserts the goals on these figures). Usage:
    .venv/bin/python bench/decontam_quality.py                   # config/config.yaml's settings
    .venv/bin/python bench/decontam_quality.py --ngram 10 --min-share 0.5 --baseline

The benchmarks and thresholds are config/config.yaml's (``benchmarks``, ``filter.decontamination``;
flags override the thresholds). Figures:

- false positives: the share of problems flagged among AIME 1983-2023 (``config/data/pool``; they
  predate every benchmark, but MATH-500 reprints some old AIME problems, so a few flags are true
  copies: the ``exact`` column counts those identical to a benchmark problem after normalisation)
  and MATH train (disjoint from MATH test, but it has template siblings of MATH-500 problems that
  differ in a number or the question).
- recall: every benchmark problem planted once per kind, deterministically: ``verbatim``;
  ``whitespace``, ``latex`` (``$`` -> ``\\(``, ``\\frac`` -> ``\\dfrac``, ``\\left( \\right)``, ``\\,``),
  ``punctuation`` (commas, stops, the final mark); ``numbers`` (every number changed); ``reworded``
  (one sentence, chosen per problem, rewritten with other words and its clauses reordered; also
  given for problems of two or more sentences); ``embedded`` (inside a longer new text). A plant is
  caught when its verdict names the benchmark it came from.
- the marble example: a new problem in competition style (boilerplate ending) must not be flagged.
- other numbers: problems that are a benchmark problem's words with other numbers (``numbers_changed``
  reports them, or removes them): the ``other numbers`` column of the corpora, the ``numbers, named``
  recall row (removed or reported, naming the benchmark).

``--baseline`` adds the previous rule (any one shared 13-gram) for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("scalediff") is None:
    sys.path.insert(0, str(REPO / "src"))

from scalediff.decontam import BenchmarkIndex  # noqa: E402
from scalediff.filter import load_benchmarks  # noqa: E402
from scalediff.filter_rules import with_defaults  # noqa: E402

POOL = REPO / "config" / "data" / "pool"
CORPORA = {"AIME 1983-2023": POOL / "aime_1983_2023.jsonl", "MATH train": POOL / "math_train.jsonl"}
MARBLE = (
    "A bag contains 5 red marbles and 7 blue marbles. Three marbles are drawn at random without replacement. "
    "The probability that exactly two of them are red can be written as $\\frac{m}{n}$, where $m$ and $n$ "
    "are relatively prime positive integers. Find $m+n$."
)
# The previous rule: one shared 13-gram flags (nothing is boilerplate, any share counts).
BASELINE = {"ngram": 13, "min_share": 1e-9, "min_contained": 1e-9, "boilerplate_df": 10**9, "min_words": 5}

# ---------------------------------------------------------------------------- plants
_MATH = re.compile(r"(\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]|\\\(.*?\\\))", re.S)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\\$])")
_OTHER_WORDS = {
    "find": "determine",
    "compute": "calculate",
    "determine": "work out",
    "number": "count",
    "integer": "whole number",
    "integers": "whole numbers",
    "positive": "strictly positive",
    "let": "suppose",
    "what": "which",
    "is": "equals",
    "are": "happen to be",
    "the": "this",
    "of": "from",
    "that": "which",
    "such": "so",
    "and": "as well as",
    "in": "inside",
    "with": "having",
    "for": "when considering",
    "each": "every",
    "value": "quantity",
    "sum": "total",
    "all": "every one of",
    "has": "possesses",
    "a": "one",
    "be": "become",
    "to": "toward",
}
_PREFIX = "Here is a question from a practice sheet that our club worked on last week."
_SUFFIX = "Please give the final answer only, with a short justification of each step."


def _outside_math(text: str, fn: Callable[[str], str]) -> str:
    parts = _MATH.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def _latex(text: str) -> str:
    def inner(m: re.Match) -> str:
        body = re.sub(r"\\frac(?![a-zA-Z])", lambda _: "\\dfrac", m.group(2))
        if "\\left" not in body:
            body = body.replace("(", "\\left(").replace(")", "\\right)")
        body = body.replace("=", "\\,=\\,")
        return f"\\[{body}\\]" if m.group(1) == "$$" else f"\\({body}\\)"

    return re.sub(r"(\$\$?)(.*?)\1", inner, text, flags=re.S)


def _punctuation(text: str) -> str:
    text = text.rstrip()
    text = text[:-1] if text.endswith((".", "?")) else text + "."
    return _outside_math(text, lambda s: s.replace(", ", " ; ").replace(": ", " - ").replace(". ", "! "))


def sentences(text: str) -> list[str]:
    return _SENTENCE_END.split(text.strip())


def _reworded(text: str, seed: int) -> str:
    """One sentence, chosen by ``seed``, in other words: common words replaced, clauses reordered."""
    parts = sentences(text)
    i = random.Random(seed).randrange(len(parts))
    s = _outside_math(parts[i], lambda p: re.sub(r"[A-Za-z]+", lambda m: _OTHER_WORDS.get(m.group().lower(), m[0]), p))
    clauses = s.split(", ")
    parts[i] = ", ".join([clauses[-1], *clauses[:-1]]) if len(clauses) > 1 else s
    return " ".join(parts)


PLANTS: dict[str, Callable[[str, int], str]] = {
    "verbatim": lambda t, _: t,
    "whitespace": lambda t, _: "\n " + re.sub(r"\s+", "  ", t).replace(" = ", "=").replace("+", " + ") + " \n",
    "latex": lambda t, _: _latex(t),
    "punctuation": lambda t, _: _punctuation(t),
    "numbers": lambda t, _: re.sub(r"\d+", lambda m: str(int(m.group()) * 3 + 7), t),
    "reworded": _reworded,
    "embedded": lambda t, _: f"{_PREFIX} {t} {_SUFFIX}",
}
LIGHT = ("verbatim", "whitespace", "latex", "punctuation")  # must all be caught


# ---------------------------------------------------------------------------- measuring
def _problems(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _caught(hit: dict[str, Any], benchmark: str | None = None) -> bool:
    verdict = BenchmarkIndex.verdict(hit)
    return verdict is not None and (benchmark is None or benchmark in verdict[1])


def build_index(overrides: dict[str, Any] | None = None, config: Path = REPO / "config" / "config.yaml"):
    """The configured benchmarks indexed with ``filter.decontamination`` (plus ``overrides``)."""
    cfg = yaml.safe_load(config.read_text())
    dcfg = {**with_defaults(cfg.get("filter"))["decontamination"], **(overrides or {})}
    benchmarks = {name: {**spec, "path": str(REPO / spec["path"])} for name, spec in cfg["benchmarks"].items()}
    return load_benchmarks(benchmarks, dcfg), benchmarks, dcfg


def measure(overrides: dict[str, Any] | None = None, named: bool = True) -> dict[str, Any]:
    """False positives on the pool corpora, recall per plant kind and the marble verdict (``named``: also
    the numbers plants named as other-numbers copies; the previous rule had no such report)."""
    index, benchmarks, dcfg = build_index(overrides)
    out: dict[str, Any] = {"settings": dcfg, "false_positives": {}, "recall": {}}
    for label, path in CORPORA.items():
        rows = _problems(path)
        started = time.perf_counter()
        hits = [index.check(r["problem"]) for r in rows]
        seconds = time.perf_counter() - started
        flagged = [(r, h) for r, h in zip(rows, hits, strict=True) if BenchmarkIndex.verdict(h)]
        out["false_positives"][label] = {
            "problems": len(rows),
            "flagged": len(flagged),
            "exact": sum(bool(h["exact"]) for _, h in flagged),
            "other_numbers": sum(bool(h["numbers"]) and not BenchmarkIndex.verdict(h) for h in hits),
            "rate": len(flagged) / len(rows),
            "problems_per_s": len(rows) / seconds,
            "examples": [
                (r.get("id"), BenchmarkIndex.verdict(h)[1]) for r, h in flagged[:: max(1, len(flagged) // 5)][:5]
            ],
        }
    plants = [
        (name, i, r["problem"])
        for name, spec in sorted(benchmarks.items())
        for i, r in enumerate(_problems(Path(spec["path"])))
    ]
    for kind, make in PLANTS.items():
        hits = [(index.check(make(text, i)), name) for name, i, text in plants]
        caught = [_caught(hit, name) for hit, name in hits]
        out["recall"][kind] = {"plants": len(caught), "caught": sum(caught), "rate": sum(caught) / len(caught)}
        if kind == "numbers" and named:  # removed, or reported as the benchmark's words with other numbers
            seen = [name in hit["remove"] | hit["numbers"] for hit, name in hits]
            out["recall"]["numbers, named"] = {"plants": len(seen), "caught": sum(seen), "rate": sum(seen) / len(seen)}
        if kind == "reworded":
            multi = [c for c, (_, _, text) in zip(caught, plants, strict=True) if len(sentences(text)) > 1]
            out["recall"]["reworded (2+ sentences)"] = {
                "plants": len(multi),
                "caught": sum(multi),
                "rate": sum(multi) / len(multi),
            }
    out["marble_flagged"] = _caught(index.check(MARBLE))
    return out


def print_table(title: str, m: dict[str, Any]) -> None:
    s = m["settings"]
    print(
        f"== {title}: {s['ngram']}-grams, boilerplate_df {s['boilerplate_df']}, min_share {s['min_share']}, "
        f"min_contained {s['min_contained']}"
    )
    print(f"{'corpus':<28}{'problems':>9}{'flagged':>9}{'exact':>7}{'rate':>8}{'problems/s':>12}{'other numbers':>15}")
    for label, f in m["false_positives"].items():
        print(
            f"{label:<28}{f['problems']:>9}{f['flagged']:>9}{f['exact']:>7}{f['rate']:>8.2%}"
            f"{f['problems_per_s']:>12,.0f}{f['other_numbers']:>15}"
        )
    print(f"{'plant':<28}{'plants':>9}{'caught':>9}{'':>7}{'recall':>8}")
    for kind, r in m["recall"].items():
        print(f"{kind:<28}{r['plants']:>9}{r['caught']:>9}{'':>7}{r['rate']:>8.1%}")
    print(f"marble example flagged: {m['marble_flagged']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ngram", type=int)
    ap.add_argument("--min-share", type=float)
    ap.add_argument("--min-contained", type=float)
    ap.add_argument("--boilerplate-df", type=int)
    ap.add_argument("--numbers-changed", choices=("report", "remove"))
    ap.add_argument("--baseline", action="store_true", help="also the previous rule (any shared 13-gram)")
    ap.add_argument("--examples", action="store_true", help="print some flagged pool problems")
    args = ap.parse_args()
    keys = ("ngram", "min_share", "min_contained", "boilerplate_df", "numbers_changed")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    runs = [("previous rule: any shared 13-gram", BASELINE)] if args.baseline else []
    for title, over in [*runs, ("configured" if not overrides else "configured + overrides", overrides)]:
        m = measure(over, named=over is not BASELINE)
        print_table(title, m)
        if args.examples:
            for label, f in m["false_positives"].items():
                for pid, detail in f["examples"]:
                    print(f"  {label} {pid}: {detail}")
        print()


if __name__ == "__main__":
    main()
