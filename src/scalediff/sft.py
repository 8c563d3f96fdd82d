"""sft: fine-tune the student on original + generated data (template ``qwen_nosystem``).

Prompt ``<|im_start|>user\\n{problem}<|im_end|>\\n<|im_start|>assistant\\n``, response
``{solution}<|im_end|>``, loss on the response only. The student base's RoPE edit
(``rope_theta``, ``max_position_embeddings``) is applied to a copy of its config at load time.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Any

from scalediff import cli
from scalediff.records import read_many, write_json

log = logging.getLogger(__name__)

USER = "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"


def sft_examples(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {"prompt": USER.format(problem=r["problem"]), "response": r["solution"] + END}
        for r in rows
        if r.get("problem") and r.get("solution")
    ]


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

    rows = read_many(args.data)
    examples = sft_examples(rows)
    cfg = settings["sft"]
    overrides = {k: cfg[k] for k in ("rope_theta", "max_position_embeddings") if cfg.get(k) is not None}
    log.info(
        "sft: %d rows (%s), %d examples, config overrides %s",
        len(rows),
        dict(Counter(r.get("origin") for r in rows)),
        len(examples),
        overrides,
    )
    stats = train(args.base_model, examples, args.output, cfg, loss_csv=args.loss_csv, config_overrides=overrides)
    if is_main_process():
        write_json(
            {
                "rows": len(rows),
                "by_origin": dict(Counter(r.get("origin") for r in rows)),
                "config_overrides": overrides,
                **stats,
            },
            args.summary,
        )


if __name__ == "__main__":
    main()
