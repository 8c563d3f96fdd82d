import json

from scalediff.ingest import ingest, main
from scalediff.records import problem_id, read_rows


def _write(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())


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
    pool, rejects, summary = ingest(config)
    assert rejects == []
    assert [(r["problem"], r["answer"], r["source"]) for r in pool] == [
        ("What is 1+1?", "2", "am"),
        ("What is 2+2?", None, "am"),
        ("What is 3+3?", "6", "flat"),
    ]
    assert pool[0]["solution"].startswith("<think>")
    assert pool[0]["id"] == problem_id("What is 1+1?")
    assert summary["kept"] == 3


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
    settings = {"seed": 0, "pool": {"sources": [{"name": "messy", "path": str(src), "format": "flat"}]}}
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
    pool = read_rows(out / "pool.parquet")
    rejects = {r["row"]: r for r in read_rows(out / "rejects.parquet") if r["row"] is not None}
    dup = [r for r in read_rows(out / "rejects.parquet") if r["reason"].startswith("duplicate")]
    assert [p["problem"] for p in pool] == ["Good one?", "Another good one?"]
    assert rejects[2]["reason"].startswith("invalid JSON") and rejects[2]["file"] == str(src)
    assert rejects[3]["reason"].startswith("invalid UTF-8")
    assert (rejects[4]["field"], rejects[4]["reason"]) == ("problem", "empty")
    assert rejects[5]["reason"] == "not a string (int)"
    assert (rejects[6]["field"], rejects[6]["reason"]) == ("problem", "missing")
    assert len(dup) == 1
    # Accounting: every non-blank line is kept or rejected, none lost.
    assert len(pool) + len(rejects) + len(dup) == 8
