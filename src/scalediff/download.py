"""download: fetch a Hub model or dataset the config names, once, on the submit host.

Every other job runs offline (``cli.setup_logging`` sets ``HF_HUB_OFFLINE``) on the local directory
this step leaves behind, so no GPU job ever waits on, or fails at, a download. The files go through
the Hub's own cache (``<hub.dir>/cache``, the ``models--org--name/{blobs,snapshots}`` layout), which
makes a killed download resume where it stopped and lets a site point ``hub.dir`` at an existing
shared cache. The output is a directory of links into that snapshot, made atomically (temp dir,
then rename), so a half-made model directory never exists under its final name.

The revision is the one pinned in ``hub.revisions``: a commit hash reproduces the run; a branch
name (``main``) is accepted but logged as unpinned.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from scalediff import cli

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def local_name(repo_id: str) -> str:
    """``org/name`` -> ``org__name`` (one directory level, no separator in the name)."""
    if not HUB_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub id of the form org/name")
    return repo_id.replace("/", "__")


def fetch(
    repo_id: str,
    output: str | os.PathLike,
    *,
    repo_type: str = "model",
    revision: str = "main",
    cache_dir: str | os.PathLike,
    allow_patterns: list[str] | None = None,
) -> dict[str, Any]:
    """Download (or find in the cache) ``repo_id`` at ``revision``; link its files under ``output``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    if not COMMIT.match(revision):
        log.warning("%s: revision %r is a branch or tag, not a commit hash: the run is not pinned", repo_id, revision)
    snapshot = Path(
        snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=str(cache_dir),
            allow_patterns=allow_patterns,
        )
    )
    # Filter here too: a snapshot found in the cache (offline) is returned whole, patterns or not.
    found = {str(p.relative_to(snapshot)): p for p in snapshot.rglob("*") if p.is_file()}
    files = [found[name] for name in sorted(filter_repo_objects(found, allow_patterns=allow_patterns))]
    if not files:
        raise SystemExit(f"{repo_type} {repo_id}@{revision}: no snapshot files match {allow_patterns}")
    size = sum(p.stat().st_size for p in files)  # stat follows the cache's links to the blobs
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        for src in files:
            dst = tmp / src.relative_to(snapshot)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.realpath(src), dst)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {
        "repo_id": repo_id,
        "repo_type": repo_type,
        "revision": revision,
        "snapshot": snapshot.name,  # the commit the revision resolved to
        "files": len(files),
        "bytes": size,
    }
    log.info("%s %s@%s -> %s: %d files, %.2f GB", repo_type, repo_id, revision, output, len(files), size / 1e9)
    return summary


def _umask() -> int:
    from scalediff.records import current_umask

    return current_umask()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fetch one Hub model or dataset into a local directory.")
    ap.add_argument("--repo-id", required=True)
    ap.add_argument("--repo-type", choices=["model", "dataset"], default="model")
    ap.add_argument("--revision", required=True)
    ap.add_argument("--cache-dir", required=True, help="the Hub cache (resumable downloads)")
    ap.add_argument("--allow-pattern", action="append", help="only files matching (repeatable)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--summary", help="JSON with the resolved commit, file count and size")
    args = ap.parse_args(argv)
    # This is the one step allowed to reach the Hub: keep an explicit HF_HUB_OFFLINE from the caller
    # (tests, air-gapped sites with a pre-filled cache), never force it here.
    online = "HF_HUB_OFFLINE" not in os.environ
    cli.setup_logging()
    if online:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.pop(var, None)
    summary = fetch(
        args.repo_id,
        args.output,
        repo_type=args.repo_type,
        revision=args.revision,
        cache_dir=args.cache_dir,
        allow_patterns=args.allow_pattern,
    )
    if args.summary:
        from scalediff.records import write_json

        write_json(summary, args.summary)


if __name__ == "__main__":
    main()
