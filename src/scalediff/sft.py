"""sft: fine-tune the student on original + generated data (template ``qwen_nosystem``).

Prompt ``<|im_start|>user\\n{problem}<|im_end|>\\n<|im_start|>assistant\\n``, response
``{solution}<|im_end|>``, loss on the response only. The student base's RoPE edit
(``rope_theta``, ``max_position_embeddings``) is applied to a copy of its config at load time.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from scalediff import cli
from scalediff.records import (
    PROBLEM_SCHEMA,
    Fingerprint,
    atomic_path,
    iter_batches,
    seeded_rank,
    source_identity,
    write_json,
)

log = logging.getLogger(__name__)

USER = "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"


class DatasetExamples(Sequence):
    """``{prompt, response}`` of the final dataset's rows, formatted on access.

    The Parquet files are streamed once into an Arrow file that ``datasets`` memory-maps, shared by
    every rank on the node, so the training set (1.7M rows of 10-30K-token solutions at paper scale,
    tens of GB) is never held in Python; only the indices of rows with a problem and a solution are.
    """

    COLUMNS = ("problem", "solution", "origin")

    def __init__(
        self, paths: list[str], cache_dir: str, mix: dict[str, Any] | None = None, difficulty: str | None = None
    ):
        import numpy as np
        import pyarrow.compute as pc
        from datasets import Dataset
        from filelock import FileLock

        arrow = Path(cache_dir) / "examples.arrow"
        arrow.parent.mkdir(parents=True, exist_ok=True)
        # Large inputs are known by path, size and mtime (tens of GB are not read to check a cache): a
        # rewritten input rebuilds the cache, and training resumes only on the same inputs.
        mix = mix or {}
        made_from = Fingerprint(
            inputs=[source_identity(p) for p in paths],
            columns=self.COLUMNS,
            mix=mix,
            difficulty=source_identity(difficulty) if difficulty else None,
        )
        stamp = arrow.with_name(arrow.name + ".fingerprint.json")
        with FileLock(f"{arrow}.lock"):  # one rank converts, the others wait and map the same file
            if not (arrow.exists() and made_from.matches(stamp, f"SFT cache {arrow}")):
                stamp.unlink(missing_ok=True)  # a kill mid-rebuild must not leave the old stamp on new data
                keep = mix_selection(paths, mix, difficulty)
                self._to_arrow(paths, arrow, keep)
                made_from.save(stamp)
        self.fingerprint = made_from.digest  # the training set's identity (``train.examples_fingerprint``)
        self.rows = Dataset.from_file(str(arrow))
        table = self.rows.data.table
        # lengths of the mapped columns (null -> 0) rather than fill_null, which copies the texts
        present = pc.and_(*(pc.greater(pc.fill_null(pc.utf8_length(table[c]), 0), 0) for c in ("problem", "solution")))
        self.index = np.flatnonzero(present.to_numpy(zero_copy_only=False))
        counts = pc.value_counts(table["origin"]).to_pylist()
        self.by_origin = {c["values"]: c["counts"] for c in counts}
        self.n_rows = table.num_rows

    @classmethod
    def _to_arrow(cls, paths: list[str], arrow: Path, keep: set[str] | None = None) -> None:
        """The columns SFT reads, streamed into one Arrow IPC file (the format ``datasets`` maps).

        Not ``load_dataset("parquet")``: its reader keeps pyarrow's pre-buffered row groups until a
        file is done (measured: +0.5 GB of anonymous memory per 20k paper-length rows).
        """
        schema = pa.schema([PROBLEM_SCHEMA.field(c) for c in cls.COLUMNS])
        with atomic_path(arrow) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
            for path in paths:
                columns = [*cls.COLUMNS, "id"] if keep is not None else list(cls.COLUMNS)
                for batch in iter_batches(path, columns=columns):
                    table = pa.Table.from_batches([batch])
                    if keep is not None:
                        table = table.filter(pa.array([i in keep for i in table["id"].to_pylist()]))
                    out.write_table(table.select(list(cls.COLUMNS)).cast(schema))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, str]:  # type: ignore[override]
        row = self.rows[int(self.index[i])]
        return {"prompt": USER.format(problem=row["problem"]), "response": row["solution"] + END}


LENGTHS = "token_lengths.npz"


def mix_selection(paths: list[str], mix: dict[str, Any], difficulty: str | None) -> set[str] | None:
    """The ids of the rows an SFT data mix keeps (``sft_mix``), or None for every row.

    ``original: difficult`` keeps the original problems the selector judged difficult (the paper's
    ablation: 56.6 vs 59.2 AVG); ``generated_ratio: r`` keeps ``round(r x kept originals)`` generated
    problems, a seeded draw (all of them, with a warning, when fewer exist).
    """
    original, ratio = mix.get("original", "all"), mix.get("generated_ratio")
    if original == "all" and ratio is None:
        return None
    difficult: set[str] | None = None
    if original == "difficult":
        if not difficulty:
            raise ValueError("sft_mix.original: difficult needs the selector's labels (--difficulty)")
        difficult = set()
        for batch in iter_batches(difficulty, columns=["id", "difficult"]):
            difficult.update(
                i for i, d in zip(batch["id"].to_pylist(), batch["difficult"].to_pylist(), strict=True) if d
            )
    originals: list[str] = []
    generated: list[str] = []
    for path in paths:
        for batch in iter_batches(path, columns=["id", "origin"]):
            for row_id, origin in zip(batch["id"].to_pylist(), batch["origin"].to_pylist(), strict=True):
                if origin == "generated":
                    generated.append(row_id)
                elif difficult is None or row_id in difficult:
                    originals.append(row_id)
    if ratio is not None:
        want = round(ratio * len(originals))
        if want > len(generated):
            log.warning(
                "sft_mix.generated_ratio %.2f asks for %d generated rows; only %d exist: all are used (ratio %.2f)",
                ratio,
                want,
                len(generated),
                len(generated) / max(len(originals), 1),
            )
        seed = int(mix.get("seed", 0))
        generated = sorted(generated, key=lambda i: seeded_rank(seed, i))[:want]
    log.info("sft mix %s: %d original rows, %d generated rows", mix, len(originals), len(generated))
    return set(originals) | set(generated)


def prepare(
    paths: list[str],
    base_model: str,
    data_dir: str,
    trust_remote_code: bool = False,
    mix: dict[str, Any] | None = None,
    difficulty: str | None = None,
) -> dict[str, int]:
    """The training job's data, built on a CPU node before it starts: the Arrow file (with its
    fingerprint) and every example's token lengths, in ``data_dir``. The GPU job then only maps them
    (no rank converting or tokenizing while the others wait on a barrier)."""
    from transformers import AutoTokenizer

    from scalediff.train import cached_lengths, lengths_fingerprint

    examples = DatasetExamples(paths, cache_dir=data_dir, mix=mix, difficulty=difficulty)
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    prompt, response = cached_lengths(
        Path(data_dir) / LENGTHS, tokenizer, examples, lengths_fingerprint(base_model, examples)
    )
    return {"rows": examples.n_rows, "examples": len(examples), "tokens": int(prompt.sum() + response.sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fine-tune the student on the final dataset.")
    ap.add_argument("--data", nargs="+", required=True, help="dataset Parquet files (original, generated)")
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--prepared", help="data folder of `--prepare` (Arrow file + token lengths) to map")
    ap.add_argument("--prepare", metavar="DIR", help="only build the data folder DIR (a CPU job) and exit")
    ap.add_argument("--difficulty", help="the selector's labels of the pool (sft_mix.original: difficult)")
    ap.add_argument("--output")
    ap.add_argument("--loss-csv")
    ap.add_argument("--summary")
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    from scalediff.train import is_main_process, train

    if args.prepare:
        trust = bool(settings["sft"].get("trust_remote_code", False))
        stats = prepare(args.data, args.base_model, args.prepare, trust, settings.get("sft_mix"), args.difficulty)
        log.info("sft data prepared in %s: %s", args.prepare, stats)
        return
    if not (args.output and args.loss_csv and args.summary):
        ap.error("training needs --output, --loss-csv and --summary")
    data_dir = args.prepared or f"{args.output}.run/datasets"
    examples = DatasetExamples(args.data, cache_dir=data_dir, mix=settings.get("sft_mix"), difficulty=args.difficulty)
    cfg = settings["sft"]
    overrides = {k: cfg[k] for k in ("rope_theta", "max_position_embeddings") if cfg.get(k) is not None}
    log.info(
        "sft: %d rows (%s), %d examples, config overrides %s",
        examples.n_rows,
        examples.by_origin,
        len(examples),
        overrides,
    )
    stats = train(
        args.base_model,
        examples,
        args.output,
        cfg,
        loss_csv=args.loss_csv,
        config_overrides=overrides,
        lengths_file=str(Path(args.prepared) / LENGTHS) if args.prepared else None,
    )
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
