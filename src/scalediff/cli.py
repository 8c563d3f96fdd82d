"""Shared command-line plumbing for the stage entry points (``python -m scalediff.<stage>``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


def add_settings_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--settings",
        required=True,
        help="JSON object with the config this job needs (rules pass the validated config)",
    )


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    try:
        value = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--settings is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SystemExit("--settings must be a JSON object")
    return value


def setup_logging() -> None:
    """Log to stderr (Snakemake sends it to the rule's log file); offline by default."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def add_gather_parser(sub: Any, help: str = "join the shards") -> argparse.ArgumentParser:
    """The ``gather`` subcommand every sharded stage has: shard outputs + rejects -> one of each."""
    g = sub.add_parser("gather", help=help)
    g.add_argument("--shards", nargs="+", required=True)
    g.add_argument("--shard-rejects", nargs="+", required=True)
    g.add_argument("--output", required=True)
    g.add_argument("--rejects", required=True)
    g.add_argument("--summary", required=True)
    return g
