"""The checks a batch passes before anything runs or is created: inputs, output folder, model, device
and Dask scheduler address.

``icnn infer`` (through :func:`~napari_icnn.batch.infer_iter`) and the Batch widget's form use these
same functions, so both refuse the same set-ups in the same words. What can only be found once the
run starts (an empty input folder, a scheduler that does not answer, a folder that refuses writes)
is reported by the run itself, in the same words for both too.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_icnn.errors import BundleError, ConfigError, MissingExtra, missing_extra

if TYPE_CHECKING:
    from napari_icnn.batch.config import BatchConfig

__all__ = [
    "NO_INPUTS",
    "NO_OUT",
    "NEEDS_DISTRIBUTED",
    "inputs_problem",
    "out_problem",
    "out_note",
    "model_path",
    "model_problem",
    "device_problem",
    "scheduler_problem",
    "problems",
    "preflight",
]

NO_INPUTS = "no INPUT given: name DICOM/image files or folders to run on"
NO_OUT = "--out: an output folder is required"
CLUSTER = "the Dask cluster"
"""What needs the ``cluster`` extra, in the words of its error message."""
NEEDS_DISTRIBUTED = str(MissingExtra(CLUSTER, "cluster"))

# [protocol://]host[:port], the host a name, an IPv4 address or a bracketed IPv6 one
_SCHEDULER = re.compile(
    r"^(?:(?P<scheme>[A-Za-z]+)://)?(?:\[[0-9A-Fa-f:.]+(?:%[\w.-]+)?\]|[A-Za-z0-9][A-Za-z0-9_.-]*)"
    r"(?::(?P<port>\d{1,5}))?/?$"
)
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")
"""Dask's network protocols (``inproc`` only reaches its own process)."""


def inputs_problem(inputs: Sequence[str]) -> str | None:
    """Why the INPUT files and folders cannot be run on (``None`` when they can): none given, or one
    missing (a typo should stop the run before it starts)."""
    items = [str(i) for i in inputs if str(i).strip()]
    if not items:
        return NO_INPUTS
    for item in items:
        if not os.path.exists(item):
            return f"INPUT {item}: no such file or folder"
    return None


def out_problem(out: str | None) -> str | None:
    """Why ``out`` cannot be the output folder (``None`` when it can, or can be created). Nothing is
    created here; whether the folder takes writes is found when the run starts."""
    if not str(out or "").strip():
        return NO_OUT
    path = Path(str(out)).expanduser().absolute()
    if path.exists():
        return None if path.is_dir() else f"--out {out}: exists and is not a folder"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():  # the words the failing mkdir of the run would give
        return f"--out {out}: cannot create the folder ({os.strerror(errno.ENOTDIR)})"
    return None


def out_note(out: str | None) -> str | None:
    """What a run into ``out`` will continue from (``None``: nothing, a fresh folder)."""
    from napari_icnn.batch.run import SUMMARY_NAME

    if not str(out or "").strip() or not (Path(str(out)).expanduser() / SUMMARY_NAME).is_file():
        return None
    return f"Holds results of an earlier run: inputs already in its {SUMMARY_NAME} are skipped."


def model_path(model: str | None) -> str:
    """The bundle folder a batch runs: ``model`` made absolute, or the default bundle."""
    from napari_icnn.bundle import default_bundle_path

    return os.path.abspath(os.path.expanduser(model)) if model else str(default_bundle_path())


def model_problem(model: str | None) -> str | None:
    """Why ``model`` (``None``: the default) is not a usable bundle folder: :func:`~napari_icnn.bundle.check_model`
    of :func:`model_path` (``None`` when it looks usable; its weights are checked when it loads)."""
    from napari_icnn.bundle import check_model

    return check_model(model_path(model))


def device_problem(device: str, scheduler: str | None = None) -> str | None:
    """Why ``device`` cannot run here (``None`` when it can). On a cluster the workers resolve it."""
    if scheduler and scheduler.strip():
        return None
    from napari_icnn.devices import resolve_device

    try:
        resolve_device(device)
    except ConfigError as err:
        return str(err)
    return None


def scheduler_problem(address: str | None) -> str | None:
    """Why ``address`` is not a Dask scheduler address this machine can use (``None`` when it is one, or
    is empty: run here). Only the form is checked; whether the scheduler answers is found when the
    run starts."""
    address = (address or "").strip()
    if not address:
        return None
    m = _SCHEDULER.match(address)
    scheme = (m.group("scheme") or "tcp").lower() if m else ""
    if not m or scheme not in _SCHEMES or (m.group("port") and not 0 < int(m.group("port")) < 65536):
        return f"--scheduler {address}: not a scheduler address; give one like tcp://host:8786"
    if not has_distributed():
        return NEEDS_DISTRIBUTED
    return None


def has_distributed() -> bool:
    """Whether Dask and its ``distributed`` package (the ``cluster`` extra) are installed."""
    return not missing_extra("cluster")


def problems(
    inputs: Sequence[str],
    out: str | None,
    *,
    model: str | None = None,
    device: str = "auto",
    scheduler: str | None = None,
) -> dict[str, str]:
    """Every problem of a batch's set-up, keyed by the :class:`~napari_icnn.batch.BatchConfig` field it
    concerns, in the order of the form (empty when it can start)."""
    found = {
        "inputs": inputs_problem(inputs),
        "out": out_problem(out),
        "model": model_problem(model),
        "device": device_problem(device, scheduler),
        "scheduler": scheduler_problem(scheduler),
    }
    return {name: text for name, text in found.items() if text}


def preflight(cfg: BatchConfig, *, inputs: bool = True) -> None:
    """Refuse a batch that cannot start, before anything is started or created. ``inputs=False``
    leaves out the inputs (files still to be retrieved from a PACS).

    Raises
    ------
    BundleError
        The model bundle is missing or incomplete.
    ConfigError
        The first other problem of :func:`problems`, naming its field.
    """
    found = problems(cfg.inputs, cfg.out, model=cfg.model, device=cfg.device, scheduler=cfg.scheduler)
    for name, text in found.items():
        if name == "inputs" and not inputs:
            continue
        if name == "model":
            raise BundleError(text)
        if text == NEEDS_DISTRIBUTED:
            raise MissingExtra(CLUSTER, "cluster", field=name)
        raise ConfigError(text, field=name)
