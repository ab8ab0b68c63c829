"""A small live plot of a training run: losses and validation AUC per epoch.

One matplotlib figure (no pyplot: no global state shared with the user's own figures) on a Qt
canvas, two panels side by side: training and validation loss on the left, validation AUC on the
right (0.5, chance, dashed). The warm-up epochs, trained without the interpretable layer's mask and
filter loss, are shaded. Each new epoch costs one ``draw_idle``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

__all__ = ["MetricsPlot", "SERIES"]

SERIES: tuple[tuple[str, str], ...] = (
    ("cls_loss", "train loss"),
    ("val_loss", "val loss"),
    ("val_auc", "val AUC"),
)
"""Metric key (as in the training engine's ``EpochEnd.metrics``) and legend label, in drawing order.
The training curve is the classification loss, the quantity the validation loss measures too (the
total adds the weighted filter loss, which is negative and changes scale once the warm-up ends)."""
_PANEL = {"cls_loss": 0, "val_loss": 0, "val_auc": 1}
_HEIGHT_PX = 190


class MetricsPlot(QWidget):
    """Per-epoch training loss, validation loss and validation AUC.

    Parameters
    ----------
    theme
        A napari theme name (``"dark"``, ``"light"``, ...) whose colours the plot takes; ``None``
        keeps matplotlib's defaults.
    """

    def __init__(self, parent: QWidget | None = None, theme: str | None = None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self._data: dict[str, list[tuple[int, float]]] = {key: [] for key, _ in SERIES}
        self._warmup = 0
        self._n_epochs = 0
        self._colours = _palette(theme)
        self.figure = Figure(figsize=(4.0, _HEIGHT_PX / 100), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(_HEIGHT_PX)
        self.loss_ax, self.auc_ax = self.figure.subplots(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._redraw()

    # ------------------------------------------------------------------ data

    @property
    def series(self) -> dict[str, list[tuple[int, float]]]:
        """A copy of the plotted points: metric key -> ``[(epoch, value), ...]``."""
        return {key: list(points) for key, points in self._data.items()}

    def clear(self, n_epochs: int = 0, warmup_epochs: int = 0) -> None:
        """Start a new run of ``n_epochs`` whose first ``warmup_epochs`` are warm-up."""
        for points in self._data.values():
            points.clear()
        self._n_epochs = max(0, int(n_epochs))
        self._warmup = max(0, int(warmup_epochs))
        self._redraw()

    def add_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Plot one finished epoch (metrics that are missing or not finite are left out)."""
        self._add(epoch, metrics)
        self._redraw()

    def set_history(self, history: Sequence[Mapping[str, float]]) -> None:
        """Plot the epochs a resumed run already has (each entry holds its ``epoch``)."""
        for entry in history:
            if "epoch" in entry:
                self._add(int(entry["epoch"]), entry)
        self._redraw()

    def _add(self, epoch: int, metrics: Mapping[str, float]) -> None:
        for key, _ in SERIES:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                points = self._data[key]
                points[:] = [p for p in points if p[0] != epoch]  # a resumed epoch replaces its first try
                points.append((int(epoch), float(value)))
                points.sort()

    # ------------------------------------------------------------------ drawing

    def _redraw(self) -> None:
        c = self._colours
        self.figure.set_facecolor(c["face"])
        last = max([self._n_epochs] + [p[0] for pts in self._data.values() for p in pts] + [1])
        for ax, title in ((self.loss_ax, "loss"), (self.auc_ax, "validation AUC")):
            ax.clear()
            ax.set_facecolor(c["axes"])
            ax.set_title(title, fontsize=8, color=c["text"], loc="left")
            ax.tick_params(labelsize=7, colors=c["text"], length=2)
            for spine in ax.spines.values():
                spine.set_color(c["grid"])
            ax.grid(True, color=c["grid"], linewidth=0.5, alpha=0.6)
            ax.set_xlim(0.5, last + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if self._warmup:
                ax.axvspan(0.5, self._warmup + 0.5, color=c["warmup"], alpha=0.35, linewidth=0)
        self.auc_ax.set_ylim(0.0, 1.0)
        self.auc_ax.axhline(0.5, color=c["grid"], linestyle="--", linewidth=0.8)
        if self._warmup:
            for ax in (self.loss_ax, self.auc_ax):
                ax.text(
                    0.6,
                    0.03,
                    "warm-up",
                    transform=ax.get_xaxis_transform(),
                    fontsize=6,
                    color=c["text"],
                    alpha=0.7,
                    va="bottom",
                )
        for key, label in SERIES:
            points = self._data[key]
            if not points:
                continue
            ax = (self.loss_ax, self.auc_ax)[_PANEL[key]]
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color=c[key], label=label)
        if self._data["cls_loss"] or self._data["val_loss"]:
            legend = self.loss_ax.legend(fontsize=6, frameon=False, loc="best")
            for text in legend.get_texts():
                text.set_color(c["text"])
        self.canvas.draw_idle()


def _palette(theme: str | None) -> dict[str, str]:
    """Plot colours from a napari theme (its background, text and accent colours)."""
    colours = {
        "face": "#ffffff",
        "axes": "#ffffff",
        "text": "#222222",
        "grid": "#b0b0b0",
        "warmup": "#d9d9d9",
        "cls_loss": "#6fa8dc",
        "val_loss": "#f6b26b",
        "val_auc": "#93c47d",
    }
    if theme is None:
        return colours
    try:
        from napari.utils.theme import get_theme

        t = get_theme(theme)
    except (ImportError, KeyError, ValueError):  # an unknown or removed theme: matplotlib's look
        return colours
    colours.update(
        face=t.foreground.as_hex(),
        axes=t.background.as_hex(),
        text=t.text.as_hex(),
        grid=t.highlight.as_hex(),
        warmup=t.primary.as_hex(),
    )
    return colours
