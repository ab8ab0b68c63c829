"""Form settings remembered between sessions (the Explain and Train widgets read and write them; no Qt).

Small JSON files in the user's config folder (platformdirs): ``explain.json`` holds the Explain
widget's model path, top-K, region threshold and heat-map toggle; ``train.json`` the Train widget's
form as of its last run. ``NAPARI_ICNN_NOPERSIST=1`` turns remembering off (tests, kiosks):
defaults are read and nothing is written. A damaged or foreign file is ignored value by value,
never fatal: the widgets must always open.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from napari_icnn.atomic import atomic_write_text
from napari_icnn.explain import REGION_THRESHOLD

__all__ = [
    "ExplainSettings",
    "TOP_K_RANGE",
    "THRESHOLD_RANGE",
    "persist_enabled",
    "settings_path",
    "load_settings",
    "save_settings",
    "load_document",
    "save_document",
]

_log = logging.getLogger(__name__)

TOP_K_RANGE = (1, 32)
"""Filters shown per scan: one is the least that explains anything; beyond ~30 the layer list is unreadable."""
THRESHOLD_RANGE = (0.05, 0.95)
"""Region threshold as a fraction of each filter's own peak; 0 or 1 would give the whole scan or one pixel."""
_FILE = "explain.json"


@dataclass(frozen=True)
class ExplainSettings:
    """What the Explain widget remembers. Valid once built (values inside their ranges)."""

    model_path: str | None = None
    """Bundle folder; ``None`` means the default bundle (:func:`napari_icnn.bundle.default_bundle_path`)."""
    top_k: int = 5
    threshold: float = REGION_THRESHOLD
    heat_maps: bool = False

    def __post_init__(self) -> None:
        lo, hi = TOP_K_RANGE
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not lo <= self.top_k <= hi:
            raise ValueError(f"top_k must be an integer in [{lo}, {hi}]; got {self.top_k!r}")
        lo_t, hi_t = THRESHOLD_RANGE
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"threshold must be a number; got {self.threshold!r}")
        if not lo_t <= float(self.threshold) <= hi_t:
            raise ValueError(f"threshold must lie in [{lo_t}, {hi_t}]; got {self.threshold!r}")
        if not isinstance(self.heat_maps, bool):
            raise ValueError(f"heat_maps must be true or false; got {self.heat_maps!r}")
        if self.model_path is not None and (
            not isinstance(self.model_path, str) or not self.model_path.strip()
        ):
            raise ValueError(f"model_path must be a non-empty path or None; got {self.model_path!r}")
        object.__setattr__(self, "threshold", float(self.threshold))

    @classmethod
    def from_dict(cls, data: Any) -> ExplainSettings:
        """Settings from a parsed JSON document, keeping every valid value and defaulting the rest."""
        out = cls()
        if not isinstance(data, dict):
            return out
        for f in fields(cls):
            if f.name in data:
                try:
                    out = replace(out, **{f.name: data[f.name]})
                except ValueError as err:
                    _log.info("ignoring remembered Explain setting: %s", err)
        return out


def persist_enabled() -> bool:
    """Whether settings are remembered: not when ``NAPARI_ICNN_NOPERSIST`` is 1, true, yes or on."""
    return os.environ.get("NAPARI_ICNN_NOPERSIST", "").strip().lower() not in {"1", "true", "yes", "on"}


def settings_path(file: str = _FILE) -> Path:
    """A settings file (``NAPARI_ICNN_CONFIG_DIR`` overrides the platform's config folder)."""
    override = os.environ.get("NAPARI_ICNN_CONFIG_DIR")
    if override:
        return Path(override) / file
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-icnn", appauthor=False)) / file


def load_document(file: str) -> dict[str, Any]:
    """The JSON object remembered in ``file``; ``{}`` when persistence is off, or the file is missing,
    unreadable or not an object."""
    if not persist_enabled():
        return {}
    path = settings_path(file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        _log.warning("%s: unreadable, settings start from the defaults (%s)", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def save_document(file: str, data: dict[str, Any]) -> Path | None:
    """Remember ``data`` in ``file`` (atomically); returns the file, or ``None`` when persistence is off or
    the folder cannot be written (a settings file is never worth an error dialog)."""
    if not persist_enabled():
        return None
    path = settings_path(file)
    try:
        return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except (OSError, TypeError, ValueError) as err:
        _log.warning("%s: settings not saved (%s)", path, err)
        return None


def load_settings() -> ExplainSettings:
    """The remembered Explain settings, or the defaults (persistence off, no file, unreadable file)."""
    return ExplainSettings.from_dict(load_document(_FILE))


def save_settings(settings: ExplainSettings) -> Path | None:
    """Remember the Explain settings; see :func:`save_document`."""
    return save_document(_FILE, asdict(settings))
