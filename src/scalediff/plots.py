"""Small matplotlib figures for the Snakemake report (headless backend, atomic writes)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scalediff.records import atomic_path  # noqa: E402


class Tally(NamedTuple):
    """A distribution as its distinct values (ascending) and how often each occurs: drawn and summarised
    exactly as the values repeated, in memory that follows the distinct values rather than the rows."""

    values: np.ndarray
    counts: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float:
        # fsum then / n, as statistics.fmean; the same float for integer values (products exact below 2**53)
        return math.fsum((self.values * self.counts).tolist()) / self.n

    def median(self) -> float | int:
        """``statistics.median`` of the values repeated: the middle value, or the mean of the two middle ones."""
        ends = np.cumsum(self.counts)
        lo, hi = (self.values[np.searchsorted(ends, k, side="right")].item() for k in ((self.n - 1) // 2, self.n // 2))
        return lo if self.n % 2 else (lo + hi) / 2


class Binned(NamedTuple):
    """Counts already binned: ``counts[i]`` values in ``[edges[i], edges[i + 1])``, the last bin closed."""

    counts: np.ndarray
    edges: np.ndarray


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
    series: dict[str, Sequence[float] | Binned] | None = None,
) -> None:
    """One histogram (or several overlaid via ``series``), optionally with a vertical marker.

    A ``Binned`` series is drawn with its own edges (``bins`` does not apply): the same bars as its values."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, vals in (series or {"": values}).items():
        if isinstance(vals, Binned):
            if vals.counts.sum():  # each left edge falls in its own bin, weighted by that bin's count
                ax.hist(vals.edges[:-1], bins=vals.edges, weights=vals.counts, alpha=0.6, label=label or None)
        elif len(vals):
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
    panels: Sequence[tuple[str, str, dict[str, Sequence[float] | Tally]]], path: str | os.PathLike, bins: int = 30
) -> None:
    """Side-by-side panels ``(title, xlabel, {label: values or Tally})``; medians in the legend."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, xlabel, series) in zip(axes[0], panels, strict=True):
        series = {k: v if isinstance(v, Tally) else _tally(v) for k, v in series.items()}
        every = np.concatenate([t.values for t in series.values()]) if series else []
        edges = np.histogram_bin_edges(every, bins=bins) if len(every) else bins  # shared bins: comparable bars
        for label, t in series.items():
            if t.n:
                label = f"{label} (n={t.n}, median {t.median():g})"
                ax.hist(t.values, bins=edges, weights=t.counts, alpha=0.6, label=label)
        if not any(t.n for t in series.values()):
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        if any(t.n for t in series.values()):
            ax.legend(fontsize=8)
    save(fig, path)


def _tally(values: Sequence[float]) -> Tally:
    values, counts = np.unique(np.asarray(values), return_counts=True)
    return Tally(values, counts)
