"""The output folder of a training run: where the engine keeps its checkpoints, what a folder holds as far as
starting or resuming a run there is concerned, and how a run ended.

A run writes the model bundle into its output folder and, beside it, ``checkpoints/`` with ``last.pt`` (the
last completed epoch: what ``--resume`` continues from), ``best.pt`` (the best epoch so far: what the bundle is
made from), ``config.json`` (the resolved configuration) and ``history.json`` (one entry per completed epoch).
No Qt and no torch here: the Train widget reads folders with it while the user types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_icnn.config import TrainConfig, flag_of
from napari_icnn.errors import ConfigError

if TYPE_CHECKING:
    from napari_icnn.engine.train import TrainResult

__all__ = [
    "CHECKPOINT_DIR",
    "LAST",
    "BEST",
    "CONFIG",
    "HISTORY",
    "CACHE",
    "RunFolder",
    "OutputFolder",
    "TrainOutcome",
    "inspect_output",
    "check_output",
    "missing_output",
    "outcome_of",
]

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
CONFIG = "config.json"
HISTORY = "history.json"
CACHE = "cache"
"""The folder under :data:`CHECKPOINT_DIR` of ``--cache disk``."""


@dataclass(frozen=True)
class RunFolder:
    """The files of the run in output folder ``out`` (none of them need exist)."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / CHECKPOINT_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def config_file(self) -> Path:
        return self.checkpoints / CONFIG

    @property
    def history_file(self) -> Path:
        return self.checkpoints / HISTORY

    @property
    def cache(self) -> Path:
        return self.checkpoints / CACHE

    def has_checkpoint(self) -> bool:
        """Whether there is a completed epoch to resume from."""
        return self.last.is_file()

    def saved_config(self) -> dict[str, Any]:
        """The configuration the run saved (``{}`` when there is none or it cannot be read)."""
        return _read_json(self.config_file, {})

    def history(self) -> list[dict[str, Any]]:
        """The metrics of the completed epochs, oldest first (``[]`` when none can be read)."""
        return _read_json(self.history_file, [])


def _read_json(path: Path, default: Any) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


@dataclass(frozen=True)
class OutputFolder:
    """What an output folder holds, as far as starting or resuming a run there is concerned."""

    path: Path
    state: str
    """``"new"`` (missing or empty), ``"interrupted"`` (a resumable run), ``"finished"``,
    ``"occupied"`` (anything else) or ``"file"`` (not a folder)."""
    epochs_done: int = 0
    epochs: int = 0

    @property
    def can_start(self) -> bool:
        return self.state == "new"

    @property
    def can_resume(self) -> bool:
        return self.state == "interrupted"

    def message(self) -> str | None:
        """What to tell the user of the Train widget next to the field (``None`` for a new folder)."""
        p = self.path
        if self.state == "file":
            return f"{p}: exists and is not a folder."
        if self.state == "interrupted":
            return (
                f"Holds a run stopped after epoch {self.epochs_done} of {self.epochs}: Resume continues it; "
                "choose a new folder to start afresh."
            )
        if self.state == "finished":
            return f"Holds a finished run ({self.epochs} epochs); choose a new folder for a new run."
        if self.state == "occupied":
            return f"{p}: the folder exists and is not empty; choose a new folder (nothing in it is overwritten)."
        return None


def inspect_output(text: str) -> OutputFolder:
    """Classify an output folder (reads a directory listing and two small JSON files)."""
    path = Path(text.strip()).expanduser()
    if not path.exists():
        return OutputFolder(path, "new")
    if not path.is_dir():
        return OutputFolder(path, "file")
    try:
        empty = not any(path.iterdir())
    except OSError:
        return OutputFolder(path, "occupied")
    if empty:
        return OutputFolder(path, "new")
    run = RunFolder(path)
    if not run.has_checkpoint():
        return OutputFolder(path, "occupied")
    epochs = int(run.saved_config().get("epochs", 0))
    done = len(run.history())
    return OutputFolder(path, "finished" if epochs and done >= epochs else "interrupted", done, epochs)


def missing_output() -> ConfigError:
    """The error of a run without an output folder (the command line and the Train widget say the same)."""
    return ConfigError(f"{flag_of('out')}: give the folder the model bundle is written to", field="out")


def check_output(out: str, resume: bool) -> None:
    """Raise :class:`ConfigError` unless a run may write into ``out``: a new or empty folder, or, to
    ``resume``, one holding a checkpoint."""
    if not out:
        raise missing_output()
    path = Path(out)
    if resume:
        if not RunFolder(path).has_checkpoint():
            raise ConfigError(
                f"{flag_of('resume')}: {path} has no checkpoint to resume ({CHECKPOINT_DIR}/{LAST} is missing)",
                field="resume",
            )
        return
    if path.exists() and any(path.iterdir()):
        raise ConfigError(
            f"{flag_of('out')} {path}: the folder exists and is not empty; choose a new folder, or add "
            f"{flag_of('resume')} to continue an interrupted run there (nothing was overwritten)",
            field="out",
        )


@dataclass(frozen=True)
class TrainOutcome:
    """How a run ended, in the terms of its output folder."""

    out: Path
    stopped: bool
    epochs_done: int
    """Epochs completed in the output folder's run (earlier, resumed-from epochs included)."""
    n_epochs: int
    best_epoch: int
    """Epoch the model was taken from (0: none yet)."""
    bundle: Path | None
    """The bundle folder when it holds a model, else ``None``."""
    seconds: float
    warmup_epochs: int = 0

    def describe(self) -> str:
        """One paragraph for the user: what was kept, where, and what to do next."""
        took = _duration(self.seconds)
        if not self.stopped:
            return (
                f"Finished {self.epochs_done} epochs in {took}; the model (best epoch {self.best_epoch}) "
                f"is in {self.out}."
            )
        if self.epochs_done == 0:
            return (
                "Stopped before the first epoch finished: there was no checkpoint to keep and no model "
                "was written."
            )
        kept = (
            f"Stopped after epoch {self.epochs_done} of {self.n_epochs}; the checkpoint of epoch "
            f"{self.epochs_done} is kept, Resume continues from it."
        )
        if self.bundle is not None:
            return f"{kept} A model from the best epoch so far ({self.best_epoch}) is in {self.out}."
        if self.epochs_done <= self.warmup_epochs:
            return f"{kept} There is no model yet: warm-up epochs do not make an interpretable model."
        return f"{kept} There is no model yet."


def outcome_of(cfg: TrainConfig, result: TrainResult | None, seconds: float) -> TrainOutcome:
    """The outcome of a run of ``cfg`` that returned ``result`` (``None``: stopped before the engine could say)."""
    from napari_icnn.bundle import METADATA, WEIGHTS

    out = Path(cfg.out)
    run = RunFolder(out)
    # A resumed run trains with the settings saved in its folder, not with the ones it was started with.
    saved = TrainConfig.from_dict({**(run.saved_config() or cfg.resolved().to_dict()), "resume": cfg.resume})
    has_model = (out / WEIGHTS).is_file() and (out / METADATA).is_file()
    # the engine saves its configuration resolved, and resolved() always fixes the schedule
    assert saved.epochs is not None and saved.warmup_epochs is not None
    if result is None:
        return TrainOutcome(out, True, len(run.history()), saved.epochs, 0, out if has_model else None, seconds,
                            saved.warmup_epochs)
    return TrainOutcome(
        out=out,
        stopped=result.stopped,
        epochs_done=result.epochs_done,
        n_epochs=saved.epochs,
        best_epoch=result.best_epoch,
        bundle=out if has_model and result.best_epoch > 0 else None,
        seconds=seconds,
        warmup_epochs=0 if saved.ordinary else saved.warmup_epochs,
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
