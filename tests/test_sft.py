"""The SFT examples view over the final dataset: formatted on access, rows without text skipped."""

from scalediff.records import PROBLEM_SCHEMA, write_rows
from scalediff.sft import END, USER, DatasetExamples


def test_dataset_examples_format_rows_and_skip_the_ones_without_text(tmp_path):
    def row(i, problem, solution, origin):
        return {"id": str(i), "problem": problem, "solution": solution, "answer": None, "origin": origin, "source": "t"}

    write_rows(
        [row(0, "Find x.", "x = 1", "original"), row(1, "Find y.", None, "original")],
        tmp_path / "o.parquet",
        PROBLEM_SCHEMA,
    )
    write_rows(
        [row(2, " ", "ok", "generated"), row(3, "Find z.", "z = 3", "generated")],
        tmp_path / "g.parquet",
        PROBLEM_SCHEMA,
    )
    examples = DatasetExamples([str(tmp_path / "o.parquet"), str(tmp_path / "g.parquet")], str(tmp_path / "cache"))

    assert examples.n_rows == 4 and examples.by_origin == {"original": 2, "generated": 2}
    # row 2's problem is whitespace: kept, as before (only missing/empty texts are skipped)
    assert [e["response"] for e in examples] == ["x = 1" + END, "ok" + END, "z = 3" + END]
    assert examples[0]["prompt"] == USER.format(problem="Find x.")
