"""Typed progress events that long-running generators yield.

Long work (training, batch inference, cohort generation) is written as a generator that
yields these events and *returns* its result; the CLI drains it with a text progress bar
(:func:`drain`), the napari widgets run it in a ``thread_worker`` with a progress bar and a
Stop button.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Progress", "EpochEnd", "Message", "ProgressEvent", "drain", "TextProgress"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of one stage are finished (``total`` 0 = unknown).

    ``epoch``/``n_epochs`` say which training epoch a step belongs to; ``counts`` carries a batch's
    running tally (``ok``, ``error``, ``declined``): a GUI reads these, never the text."""

    stage: str
    done: int
    total: int
    detail: str = ""
    epoch: int | None = None
    n_epochs: int | None = None
    counts: Mapping[str, int] | None = None


@dataclass(frozen=True)
class EpochEnd:
    """A training epoch finished; ``metrics`` holds its losses and validation numbers."""

    epoch: int
    n_epochs: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """A line of information for the user."""

    text: str
    level: str = "info"


ProgressEvent = Progress | EpochEnd | Message


def drain(gen: Generator[Any, Any, T], on_event: Callable[[Any], None] | None = None) -> T:
    """Run a progress generator to the end, passing each event to ``on_event``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


class TextProgress:
    """A compact progress printer for terminals (one updating line per stage)."""

    def __init__(self, stream: Any = None, min_interval: float = 0.2):
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._stage: str | None = None
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, event: Any) -> None:
        if isinstance(event, Progress):
            now = time.monotonic()
            finished = event.total and event.done >= event.total
            if not finished and now - self._last < self.min_interval and event.stage == self._stage:
                return
            self._last = now
            total = f"/{event.total}" if event.total else ""
            line = f"{event.stage}: {event.done}{total} {event.detail}".rstrip()
            if self._tty:
                end = "\n" if finished else ""
                self.stream.write("\r\x1b[2K" + line + end)
            elif finished or event.stage != self._stage:
                self.stream.write(line + "\n")
            self._stage = event.stage
        elif isinstance(event, EpochEnd):
            nums = "  ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
            self._newline()
            self.stream.write(f"epoch {event.epoch}/{event.n_epochs}  {nums}\n")
        elif isinstance(event, Message):
            self._newline()
            self.stream.write(f"{event.text}\n")
        self.stream.flush()

    def _newline(self) -> None:
        if self._tty and self._stage is not None:
            self.stream.write("\n")
            self._stage = None
