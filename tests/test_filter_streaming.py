"""filter at scale: the rules pass streams (memory flat in the number of rows), its worker processes
change nothing, and gather pairs verdict shards with candidates however samples are ordered."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_filter import GOOD, _benchmarks, _disabled, _outputs, _pool, sol

from scalediff import filter as flt

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _solutions(path: Path, n: int, reasoning_words: int = 300) -> Path:
    """``n`` distinct generated rows; every 7th truncated, every 11th without a box, every 13th a loop."""
    rows = []
    for i in range(n):
        a, b = i % 997 + 2, i // 997 + 3
        words = " ".join(f"{WORDS[(i * 7 + j * j) % len(WORDS)]}{(i + j) % 101}" for j in range(reasoning_words))
        completion = f"<think>\nWe combine {a} and {b}. {words}\n</think>\n\nSo the answer is $\\boxed{{{a + b}}}$."
        if i % 13 == 0:
            completion = "<think>\n" + "wait let me recompute the same sum again " * 60 + "</think> $\\boxed{1}$"
        if i % 11 == 0:
            completion = completion.replace("\\boxed", "")
        rows.append(
            sol(
                f"g-{i:06d}",
                f"A crate holds {a} apples and {b} pears; case {i}. How many fruits are in the crate?",
                completion,
                finish_reason="length" if i % 7 == 0 else "stop",
                completion_tokens=reasoning_words * 2,
            )
        )
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=256)
    return path


def _rules(tmp: Path, solutions: Path, cfg: dict, tag: str, workers: int = 1) -> dict:
    return flt.run_rules(
        str(solutions),
        str(_pool(tmp)),
        _benchmarks(),
        cfg,
        str(tmp / f"cand-{tag}.parquet"),
        str(tmp / f"rej-{tag}.parquet"),
        str(tmp / f"stats-{tag}.json"),
        workers=workers,
    )


def test_worker_processes_change_nothing(tmp_path):
    solutions = _solutions(tmp_path / "s.parquet", 700, reasoning_words=60)
    one = _rules(tmp_path, solutions, _disabled(), "one", workers=1)
    two = _rules(tmp_path, solutions, _disabled(), "two", workers=2)
    assert one == two
    assert one["rows"]["generated"]["rejected"]["truncated"] == 100  # every 7th of 700
    for name in ("cand", "rej"):
        a, b = pq.read_table(tmp_path / f"{name}-one.parquet"), pq.read_table(tmp_path / f"{name}-two.parquet")
        assert a.num_rows and a.equals(b)


def test_rules_memory_stays_flat_as_rows_grow(tmp_path):
    """Peak Python memory of the rules pass over 12,000 rows stays within 2 MB of that over 1,500 rows
    (holding per-row state, as a whole-table pass does, costs ~0.5 KB per row: +5 MB here).
    Dedup is off: its signatures are per-problem state by design."""
    cfg = _disabled(dedup={"enabled": False})
    peaks = {}
    for n in (1_500, 12_000):
        solutions = _solutions(tmp_path / f"s{n}.parquet", n, reasoning_words=40)
        tracemalloc.start()
        stats = _rules(tmp_path, solutions, cfg, str(n))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats["inputs"]["solutions"] == n
    growth = peaks[12_000] - peaks[1_500]
    print(f"peak traced memory: {peaks} -> growth {growth / 1e6:.2f} MB")
    assert growth < 2_000_000, peaks


def _verdicts(tmp: Path, cand: Path, cfg: dict, shards: int) -> list[str]:
    paths = []
    for i in range(shards):
        out = tmp / f"v{i}.parquet"
        flt.run_model_shard(str(cand), "unused", i, shards, {"filter": cfg, "seed": 0, "engine": {}}, str(out))
        paths.append(str(out))
    return paths


def test_gather_pairs_verdicts_with_interleaved_samples(tmp_path):
    problem = "A box holds {} red and 4 blue balls. How many balls are in the box altogether?"
    rows = [
        sol("g-a", problem.format(3), GOOD.replace("{5}", "{7}"), sample=0),
        sol("g-b", problem.format(5), GOOD.replace("{5}", "{9}"), sample=0),
        sol("g-a", problem.format(3), GOOD.replace("{5}", "{7}"), sample=1),  # g-a's samples are not adjacent
    ]
    solutions = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), solutions)
    cfg = _disabled()
    _rules(tmp_path, solutions, cfg, "x")
    cand = tmp_path / "cand-x.parquet"
    verdicts = _verdicts(tmp_path, cand, cfg, shards=2)
    assert [pq.read_table(v)["id"].to_pylist() for v in verdicts] == [["g-a", "g-a"], ["g-b"]]
    args = (str(cand), str(tmp_path / "rej-x.parquet"), str(tmp_path / "stats-x.json"))
    funnel = flt.run_gather(*args, verdicts, cfg, _outputs(tmp_path))
    assert funnel["by_origin"]["generated"]["kept"] == 3
    out = pq.read_table(_outputs(tmp_path)["generated"])
    assert list(zip(out["id"].to_pylist(), out["sample"].to_pylist(), strict=True)) == [
        ("g-a", 0),
        ("g-b", 0),
        ("g-a", 1),
    ]

    # a verdict with no candidate, or a candidate with no verdict, is an error and writes nothing
    stray = pq.read_table(verdicts[1]).to_pylist()
    pq.write_table(
        pa.Table.from_pylist([*stray, {**stray[0], "id": "g-z"}], flt.VERDICT_SCHEMA), tmp_path / "stray.parquet"
    )
    outputs = {k: str(tmp_path / "o2" / Path(v).name) for k, v in _outputs(tmp_path).items()}
    with pytest.raises(RuntimeError, match="match no generated candidate"):
        flt.run_gather(*args, [verdicts[0], str(tmp_path / "stray.parquet")], cfg, outputs)
    with pytest.raises(RuntimeError, match="no model-based verdict for generated candidate g-b#0"):
        flt.run_gather(*args, [verdicts[0]], cfg, outputs)
    assert not Path(outputs["generated"]).exists() and not Path(outputs["rejects"]).exists()
    assert json.loads(Path(_outputs(tmp_path)["funnel"]).read_text())["by_origin"]["generated"]["kept"] == 3
