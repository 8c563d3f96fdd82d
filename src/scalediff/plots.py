"""Small matplotlib figures for the Snakemake report (headless backend, atomic writes)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scalediff.records import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def histogram(
    values: Sequence[float],
    path: str | os.PathLike,
    title: str,
    xlabel: str,
    bins: int = 40,
    marker: float | None = None,
    marker_label: str = "",
    series: dict[str, Sequence[float]] | None = None,
) -> None:
    """One histogram (or several overlaid via ``series``), optionally with a vertical marker."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, vals in (series or {"": values}).items():
        if len(vals):
            ax.hist(vals, bins=bins, alpha=0.6, label=label or None)
    if marker is not None:
        ax.axvline(marker, color="crimson", linestyle="--", label=marker_label or None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if series or marker_label:
        ax.legend(fontsize=8)
    _save(fig, path)


def loss_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, title: str
) -> None:
    """Training loss against step, one line per run."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, (steps, losses) in curves.items():
        ax.plot(steps, losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=8)
    _save(fig, path)
