import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalediff import ingest as ingest_module
from scalediff.ingest import ingest, main
from scalediff.records import problem_id, read_rows

REPO = Path(__file__).resolve().parents[1]


def _write(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())


def _run(out: Path, settings: dict) -> None:
    main(
        [
            "--pool",
            str(out / "pool.parquet"),
            "--rejects",
            str(out / "rejects.parquet"),
            "--summary",
            str(out / "summary.json"),
            "--settings",
            json.dumps(settings),
        ]
    )


def test_chat_and_flat_sources_map_to_one_schema(tmp_path):
    _write(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "What is 1+1?"},
                    {
                        "role": "assistant",
                        "content": "<think>easy</think> \\boxed{2}",
                        "info": {"reference_answer": "2"},
                    },
                ]
            },
            {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "\\boxed{4}"}]},
            # AM-Qwen3-Distilled's layout: `info` on each turn, the reference answer in the user turn's
            {
                "conversations": [
                    {"from": "human", "value": "What is 5+5?", "info": {"source": "x", "reference_answer": "10"}},
                    {"from": "assistant", "value": "<think>ok</think> \\boxed{10}", "info": {"reference_answer": None}},
                ]
            },
        ],
    )
    _write(tmp_path / "flat.jsonl", [{"q": "What is 3+3?", "sol": "6", "ans": 6}])
    config = {
        "seed": 0,
        "pool": {
            "sources": [
                {"name": "am", "path": str(tmp_path / "chat.jsonl"), "format": "chat"},
                {
                    "name": "flat",
                    "path": str(tmp_path / "flat.jsonl"),
                    "format": "flat",
                    "columns": {"problem": "q", "solution": "sol", "answer": "ans"},
                },
            ]
        },
    }
    summary = ingest(config, tmp_path / "pool.parquet", tmp_path / "rejects.parquet")
    pool, rejects = read_rows(tmp_path / "pool.parquet"), read_rows(tmp_path / "rejects.parquet")
    assert rejects == []
    assert [(r["problem"], r["answer"], r["source"]) for r in pool] == [
        ("What is 1+1?", "2", "am"),
        ("What is 2+2?", None, "am"),
        ("What is 5+5?", "10", "am"),
        ("What is 3+3?", "6", "flat"),
    ]
    assert pool[0]["solution"].startswith("<think>")
    assert pool[0]["id"] == problem_id("What is 1+1?")
    assert summary["kept"] == 4


def test_bad_rows_are_quarantined_with_file_line_field_and_reason(tmp_path):
    src = tmp_path / "messy.jsonl"
    _write(
        src,
        [
            {"problem": "Good one?", "answer": "1"},
            b"{not json\n",
            b'{"problem": "caf\xe9"}\n',
            {"problem": ""},
            {"problem": 42},
            {"answer": "no problem field"},
            {"problem": "Good one?"},  # duplicate
            {"problem": "Another good one?"},
        ],
    )
    out = tmp_path / "out"
    _run(out, {"seed": 0, "pool": {"sources": [{"name": "messy", "path": str(src), "format": "flat"}]}})
    pool = read_rows(out / "pool.parquet")
    all_rejects = read_rows(out / "rejects.parquet")
    dup = [r for r in all_rejects if r["reason"].startswith("duplicate")]
    rejects = {r["row"]: r for r in all_rejects if r not in dup}
    assert [p["problem"] for p in pool] == ["Good one?", "Another good one?"]
    assert rejects[2]["reason"].startswith("invalid JSON") and rejects[2]["file"] == str(src)
    assert rejects[3]["reason"].startswith("invalid UTF-8")
    assert (rejects[4]["field"], rejects[4]["reason"]) == ("problem", "empty")
    assert rejects[5]["reason"] == "not a string (int)"
    assert (rejects[6]["field"], rejects[6]["reason"]) == ("problem", "missing")
    assert len(dup) == 1
    assert (dup[0]["row"], dup[0]["file"]) == (7, str(src))  # duplicates carry their line too
    # Accounting: every non-blank line is kept or rejected, none lost.
    assert len(pool) + len(rejects) + len(dup) == 8


def test_every_kind_of_bad_line_is_quarantined_and_the_rest_streams_through(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "MAX_LINE_BYTES", 4096)
    src = tmp_path / "bad.jsonl"
    big = "x" * (ingest_module.FIELD_LIMITS["problem"] + 1)
    _write(
        src,
        [
            {"conversations": [{"from": "human", "value": "Fine?"}, {"from": "gpt", "value": "yes"}]},  # 1
            b"[1, 2]\n",  # 2: not an object
            b'"just a string"\n',  # 3
            {"messages": "not a list"},  # 4: wrong type
            {"messages": [{"role": "assistant", "content": "no user"}]},  # 5
            {"messages": [{"role": "user", "content": ["a", "list"]}]},  # 6: wrong type of the problem
            {"messages": [{"role": "user", "content": "   "}]},  # 7: empty
            {"messages": [{"role": "user", "content": "Sol is a dict?"}, {"role": "assistant", "content": {}}]},  # 8
            {"messages": [{"role": "user", "content": big}]},  # 9: a 65 KB line, over the (lowered) line cap
            b'{"messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}\n',  # 10
            b"\n",  # 11: blank, skipped
            (json.dumps({"messages": [{"role": "user", "content": "y" * 10_000}]}) + "\n").encode(),  # 12: > line cap
            b'{"messages": [{"role": "user", "content": "Last line, no newline, complete"}]}',  # 13
        ],
    )
    out = tmp_path / "out"
    _run(out, {"seed": 0, "pool": {"sources": [{"name": "am", "path": str(src), "format": "chat"}]}})
    pool = read_rows(out / "pool.parquet")
    rejects = {r["row"]: (r["field"], r["reason"]) for r in read_rows(out / "rejects.parquet")}
    assert [p["problem"] for p in pool] == ["Fine?", "Last line, no newline, complete"]
    assert rejects[2] == ("<row>", "not a JSON object (list)")
    assert rejects[3] == ("<row>", "not a JSON object (str)")
    assert rejects[4] == ("messages", "neither `messages` nor `conversations` is a list")
    assert rejects[5] == ("messages", "no user turn")
    assert rejects[6] == ("messages[0].content", "not a string (list)")
    assert rejects[7] == ("messages[0].content", "empty")
    assert rejects[8] == ("assistant.content", "not a string (dict)")
    assert rejects[9][0] == "<row>" and rejects[9][1].startswith("oversize: line of 65,")
    assert rejects[10] == ("messages[0].content", "invalid Unicode: lone surrogate at character 5")
    assert rejects[12][0] == "<row>" and rejects[12][1].startswith("oversize: line of 10,")
    assert len(rejects) == 10 and all(r["file"] == str(src) for r in read_rows(out / "rejects.parquet"))
    summary = json.loads((out / "summary.json").read_text())["sources"]["am"]
    assert summary["read"] == 12 and summary["rejected"]["oversize"] == 2


def test_an_oversize_field_within_the_line_cap_is_quarantined(tmp_path):
    src = tmp_path / "big.jsonl"
    limit = ingest_module.FIELD_LIMITS["problem"]
    _write(src, [{"problem": "p" * (limit + 1)}, {"problem": "Short?", "solution": "s" * 100}])
    out = tmp_path / "out"
    _run(out, {"seed": 0, "pool": {"sources": [{"name": "s", "path": str(src), "format": "flat"}]}})
    assert [p["problem"] for p in read_rows(out / "pool.parquet")] == ["Short?"]
    (bad,) = read_rows(out / "rejects.parquet")
    assert (bad["row"], bad["field"]) == (1, "problem")
    assert bad["reason"] == f"oversize: {limit + 1:,} characters, limit {limit:,}"


@pytest.mark.parametrize(
    "tail, why",
    [
        (b'{"problem": "Cut off in the mid', "invalid JSON"),
        (b'{"problem": "caf\xc3', "invalid UTF-8"),
    ],
)
def test_a_truncated_pool_file_stops_the_step_and_writes_nothing(tmp_path, tail, why):
    src = tmp_path / "cut.jsonl"
    _write(src, [{"problem": f"Problem {i}?"} for i in range(3000)] + [tail])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit) as exc:
        _run(out, {"seed": 0, "pool": {"sources": [{"name": "cut", "path": str(src), "format": "flat"}]}})
    message = str(exc.value)
    assert str(src) in message and "line (3001)" in message and "truncated" in message and why in message
    assert list(out.iterdir()) == []  # no pool, no rejects, no summary, no temp files


def test_an_unreadable_pool_file_stops_the_step_naming_it(tmp_path):
    good = tmp_path / "good.jsonl"
    _write(good, [{"problem": "Fine?"}])
    out = tmp_path / "out"
    for missing in (tmp_path / "nope.jsonl", tmp_path):  # absent; a directory
        sources = [
            {"name": "good", "path": str(good), "format": "flat"},
            {"name": "x", "path": str(missing), "format": "flat"},
        ]
        with pytest.raises(SystemExit) as exc:
            _run(out, {"seed": 0, "pool": {"sources": sources}})
        assert f"pool file {missing} cannot be read" in str(exc.value)
        assert not out.exists() or list(out.iterdir()) == []


def test_sampling_picks_the_same_rows_as_sampling_the_whole_list(tmp_path):
    """``sample:`` is reproduced without holding the rows: same draws as rng.sample over all unique rows."""
    import random

    src = tmp_path / "many.jsonl"
    problems = [f"Problem number {i}?" for i in range(3000)]
    _write(src, [{"problem": p} for p in problems] + [{"problem": problems[5]}])  # a duplicate is not sampled
    out = tmp_path / "out"
    _run(out, {"seed": 7, "pool": {"sources": [{"name": "s", "path": str(src), "format": "flat", "sample": 1500}]}})
    assert [r["problem"] for r in read_rows(out / "pool.parquet")] == random.Random(7).sample(problems, 1500)


# The pre-streaming ingest (commit 687141f) on config/data/pool with config.yaml's `pool` and `seed`:
# sha256 of the pool's ids joined by newlines, and of its rows as sorted-key JSON.
DEMO_IDS_SHA256 = "886cf8129f2f24b2273f24fed47d9d3b10d8b994d88dddee59e43532f7febdb2"
DEMO_ROWS_SHA256 = "8f1365c67344cee7e14ee90e6c94b09c6d9ed975723332d86cf07953ecb15ccb"


def test_demo_pool_is_the_same_as_before_streaming(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    pool_config = json.loads(json.dumps(config["pool"]))
    for source in pool_config["sources"]:
        source["path"] = str(REPO / source["path"])
    out = tmp_path / "out"
    _run(out, {"seed": config["seed"], "pool": pool_config})
    rows = read_rows(out / "pool.parquet")
    ids = "\n".join(r["id"] for r in rows)
    assert hashlib.sha256(ids.encode()).hexdigest() == DEMO_IDS_SHA256
    as_json = json.dumps(rows, sort_keys=True, ensure_ascii=False)
    assert hashlib.sha256(as_json.encode()).hexdigest() == DEMO_ROWS_SHA256
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["kept"], summary["rejected"]) == (240, 289)
    assert summary["sources"]["math_train"] == {
        "read": 7474,
        "rejected": {"duplicate": 289},
        "unique": 7185,
        "kept": 150,
    }


_MEASURE = """
import json, resource, sys
from scalediff.ingest import main
src, out = sys.argv[1:3]
settings = {"seed": 0, "pool": {"sources": [{"name": "am", "path": src, "format": "chat"}]}}
main(["--pool", out + "/pool.parquet", "--rejects", out + "/rejects.parquet", "--summary", out + "/summary.json",
      "--settings", json.dumps(settings)])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _paper_shaped_pool(path: Path, rows: int) -> None:
    """AM-Qwen3-Distilled layout (`conversations`) with ~4,000-word solutions (~25 KB each)."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(3000)]
    solutions = [f"<think>\n{' '.join(rng.choices(words, k=4000))}\n</think>\n\\boxed{{{k}}}" for k in range(8)]
    with open(path, "w") as fh:
        for i in range(rows):
            turns = [{"from": "human", "value": f"Problem {i}: find x."}, {"from": "gpt", "value": solutions[i % 8]}]
            fh.write(json.dumps({"conversations": turns}) + "\n")


def test_ingest_memory_is_flat_in_the_pool_size(tmp_path):
    """Peak RSS of the real entry point at 8K paper-shaped rows is within 1.3x of that at 2K (the
    pre-streaming ingest held every row: 296 -> 753 MB, 2.5x, here, ~40 GB at the paper's 558K rows)."""
    peaks = {}
    for rows in (2000, 8000):
        src, out = tmp_path / f"pool{rows}.jsonl", tmp_path / f"out{rows}"
        _paper_shaped_pool(src, rows)
        res = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(src), str(out)], capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr[-3000:]
        peaks[rows] = int(res.stdout.split()[-1]) / 1024
        assert json.loads((out / "summary.json").read_text())["kept"] == rows
        src.unlink()
    assert peaks[8000] <= 1.3 * peaks[2000], f"peak RSS {peaks} MB"


def test_duplicates_keep_keeps_every_row_with_unique_ids(tmp_path):
    """`pool.duplicates: keep` (the reference keeps all 558,129 rows): repeats stay, ids stay unique."""
    src = tmp_path / "pool.jsonl"
    rows = [{"problem": "Find x."}, {"problem": "Other?"}, {"problem": "Find  x."}, {"problem": " Find x.\n"}]
    _write(src, rows)
    source = {"name": "am", "path": str(src), "format": "flat"}
    kept, dropped = tmp_path / "keep", tmp_path / "drop"
    _run(kept, {"seed": 0, "pool": {"duplicates": "keep", "sources": [source]}})
    _run(dropped, {"seed": 0, "pool": {"sources": [source]}})
    pool = read_rows(kept / "pool.parquet")
    first = problem_id("Find x.")
    assert [p["id"] for p in pool] == [first, problem_id("Other?"), f"{first}-2", f"{first}-3"]
    assert [p["problem"] for p in pool] == [r["problem"] for r in rows]  # every row, in order
    assert read_rows(kept / "rejects.parquet") == []
    summary = json.loads((kept / "summary.json").read_text())["sources"]["am"]
    assert (summary["unique"], summary["duplicates_kept"], summary["kept"]) == (2, 2, 4)
    # the default drops them, each quarantined as a duplicate
    assert [p["id"] for p in read_rows(dropped / "pool.parquet")] == [first, problem_id("Other?")]
    assert len(read_rows(dropped / "rejects.parquet")) == 2
