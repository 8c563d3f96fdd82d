"""sft: fine-tune the student on original + generated data (template ``qwen_nosystem``).

Prompt ``<|im_start|>user\\n{problem}<|im_end|>\\n<|im_start|>assistant\\n``, response
``{solution}<|im_end|>``, loss on the response only. The student base's RoPE edit
(``rope_theta``, ``max_position_embeddings``) is applied to a copy of its config at load time.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from scalediff import cli
from scalediff.records import write_json

log = logging.getLogger(__name__)

USER = "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"


class DatasetExamples(Sequence):
    """``{prompt, response}`` of the final dataset's rows, formatted on access.

    The Parquet files are loaded once into a memory-mapped Arrow cache (``datasets``), shared by
    every rank on the node, so the training set (1.7M rows of 10-30K-token solutions at paper scale,
    tens of GB) is never held in Python; only the indices of rows with a problem and a solution are.
    """

    def __init__(self, paths: list[str], cache_dir: str):
        import numpy as np
        import pyarrow.compute as pc
        from datasets import load_dataset

        self.rows = load_dataset(
            "parquet",
            data_files=list(paths),
            split="train",
            cache_dir=cache_dir,
            columns=["problem", "solution", "origin"],
        )
        table = self.rows.data.table
        present = pc.and_(
            pc.greater(pc.utf8_length(pc.fill_null(table["problem"], "")), 0),
            pc.greater(pc.utf8_length(pc.fill_null(table["solution"], "")), 0),
        )
        self.index = np.flatnonzero(present.to_numpy(zero_copy_only=False))
        counts = pc.value_counts(table["origin"]).to_pylist()
        self.by_origin = {c["values"]: c["counts"] for c in counts}
        self.n_rows = table.num_rows

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, str]:  # type: ignore[override]
        row = self.rows[int(self.index[i])]
        return {"prompt": USER.format(problem=row["problem"]), "response": row["solution"] + END}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fine-tune the student on the final dataset.")
    ap.add_argument("--data", nargs="+", required=True, help="dataset Parquet files (original, generated)")
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--loss-csv", required=True)
    ap.add_argument("--summary", required=True)
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    from scalediff.train import is_main_process, train

    examples = DatasetExamples(args.data, cache_dir=f"{args.output}.run/datasets")
    cfg = settings["sft"]
    overrides = {k: cfg[k] for k in ("rope_theta", "max_position_embeddings") if cfg.get(k) is not None}
    log.info(
        "sft: %d rows (%s), %d examples, config overrides %s",
        examples.n_rows,
        examples.by_origin,
        len(examples),
        overrides,
    )
    stats = train(args.base_model, examples, args.output, cfg, loss_csv=args.loss_csv, config_overrides=overrides)
    if is_main_process():
        write_json(
            {
                "rows": examples.n_rows,
                "by_origin": examples.by_origin,
                "config_overrides": overrides,
                **stats,
            },
            args.summary,
        )


if __name__ == "__main__":
    main()
