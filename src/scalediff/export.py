"""export: the final SFT dataset for other tools (opt-in, rules/export.smk).

``llamafactory``  ``dataset_info.json`` for LLaMA-Factory: one alpaca entry per split
                  (prompt = ``problem``, response = ``solution``), ``file_name`` relative to the
                  file's own folder, so ``dataset_dir: <results>/export`` finds the Parquet files.
``hub``           pushes ``filter/dataset/{original,generated}.parquet`` + ``README.md`` (whose
                  YAML header declares the two splits) to a Hub dataset repo with huggingface_hub.
                  The token is read from the environment ``HF_TOKEN`` only: never an argument,
                  never logged. ``--dry-run`` prints the planned calls and uploads nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from scalediff import cli
from scalediff.records import atomic_path, write_json

log = logging.getLogger(__name__)

SPLITS = ("original", "generated")
HUB_FILES = [f"{s}.parquet" for s in SPLITS] + ["README.md"]
COLUMNS = {"prompt": "problem", "response": "solution"}


def dataset_info(files: dict[str, str | os.PathLike], out_dir: str | os.PathLike, prefix: str = "scalediff") -> dict:
    """LLaMA-Factory ``dataset_info.json`` entries ``{prefix}_{split}``; checks the columns exist."""
    info = {}
    for split, path in files.items():
        names = pq.read_schema(path).names
        missing = [c for c in COLUMNS.values() if c not in names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (has {names})")
        info[f"{prefix}_{split}"] = {
            "file_name": os.path.relpath(Path(path).resolve(), Path(out_dir).resolve()),
            "formatting": "alpaca",
            "columns": dict(COLUMNS),
        }
    return info


def hub_plan(dataset_dir: str | os.PathLike, repo_id: str | None, private: bool) -> dict[str, Any]:
    """The two huggingface_hub calls a push makes (keyword arguments, without the token)."""
    if not repo_id:
        raise ValueError("no Hub repo: set report.export.hub_repo (owner/name) in the config")
    folder = Path(dataset_dir)
    missing = [f for f in HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing}")
    return {
        "create_repo": {"repo_id": repo_id, "repo_type": "dataset", "private": private, "exist_ok": True},
        "upload_folder": {
            "repo_id": repo_id,
            "repo_type": "dataset",
            "folder_path": str(folder),
            "allow_patterns": list(HUB_FILES),
            "commit_message": "ScaleDiff-Math (scalediff workflow): original + generated splits",
        },
    }


def push_to_hub(
    dataset_dir: str | os.PathLike, repo_id: str | None, private: bool = True, dry_run: bool = False
) -> dict[str, Any]:
    """Create the dataset repo if needed and upload the dataset; returns a record of what was done."""
    plan = hub_plan(dataset_dir, repo_id, private)
    folder = Path(dataset_dir)
    files = {f: (folder / f).stat().st_size for f in HUB_FILES}
    token = os.environ.get("HF_TOKEN")
    if dry_run:
        print(f"dry run: would push {len(files)} files to https://huggingface.co/datasets/{repo_id}")
        for name, size in files.items():
            print(f"  {name} ({size} bytes)")
        for call, kwargs in plan.items():
            print(f"  HfApi.{call}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        print(f"  HF_TOKEN is {'set' if token else 'NOT set (a real push would fail)'}")
        return {"dry_run": True, "repo_id": repo_id, "files": files, "calls": plan}
    if not token:
        raise RuntimeError(
            "HF_TOKEN is not set: export a Hub token with write access (e.g. `export HF_TOKEN=...`) "
            "before `snakemake export_hub`; it is read from the environment only"
        )
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(**plan["create_repo"])
    commit = api.upload_folder(**plan["upload_folder"])
    log.info("pushed %d files to %s", len(files), url)
    return {
        "dry_run": False,
        "repo_id": repo_id,
        "url": str(url),
        "commit": getattr(commit, "oid", None),
        "files": files,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export the filtered dataset (LLaMA-Factory, Hugging Face Hub).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lf = sub.add_parser("llamafactory", help="write a LLaMA-Factory dataset_info.json")
    for split in SPLITS:
        lf.add_argument(f"--{split}", required=True, help=f"{split}.parquet")
    lf.add_argument("--output", required=True, help="dataset_info.json")
    hub = sub.add_parser("hub", help="push the dataset folder to a Hub dataset repo (token: $HF_TOKEN)")
    hub.add_argument("--dataset-dir", required=True, help="folder with original/generated.parquet and README.md")
    hub.add_argument("--repo", default=None, help="Hub dataset repo id, owner/name")
    hub.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    hub.add_argument("--dry-run", action="store_true", help="print what would be uploaded; upload nothing")
    hub.add_argument("--receipt", default=None, help="JSON record of the push (no token)")
    args = ap.parse_args(argv)
    cli.setup_logging()
    if args.cmd == "llamafactory":
        out = Path(args.output)
        info = dataset_info({s: getattr(args, s) for s in SPLITS}, out.parent)
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
        log.info("wrote %s: %s", out, ", ".join(info))
        return
    try:
        record = push_to_hub(args.dataset_dir, args.repo, private=not args.public, dry_run=args.dry_run)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"export hub: {e}") from None
    if args.receipt:
        write_json(record, args.receipt)


if __name__ == "__main__":
    main()
