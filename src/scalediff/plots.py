"""Small matplotlib figures for the Snakemake report (headless backend, atomic writes)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scalediff.records import atomic_path  # noqa: E402


def save(fig, path: str | os.PathLike) -> None:
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
    save(fig, path)


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
    save(fig, path)


def histograms(
    panels: Sequence[tuple[str, str, dict[str, Sequence[float]]]], path: str | os.PathLike, bins: int = 30
) -> None:
    """Side-by-side panels ``(title, xlabel, {label: values})``; medians in the legend."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, xlabel, series) in zip(axes[0], panels, strict=True):
        every = [v for vals in series.values() for v in vals]
        edges = np.histogram_bin_edges(every, bins=bins) if every else bins  # shared bins: comparable bars
        for label, vals in series.items():
            if len(vals):
                median = statistics.median(vals)
                ax.hist(vals, bins=edges, alpha=0.6, label=f"{label} (n={len(vals)}, median {median:g})")
        if not any(len(v) for v in series.values()):
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        if any(len(v) for v in series.values()):
            ax.legend(fontsize=8)
    save(fig, path)
