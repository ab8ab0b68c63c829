"""Devices: what a ``--device`` choice resolves to on this machine, and the mixed precision it runs in.

Below the bundle and the engines (both place networks on a device); imports torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from napari_icnn.config import DEVICES
from napari_icnn.errors import ConfigError

__all__ = ["resolve_device", "DeviceInfo", "describe_device", "autocast_for"]


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` on a machine without CUDA is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available on this machine (use --device cpu or auto)",
                              field="device")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device: must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]} (got {name!r})", field="device")


@dataclass(frozen=True)
class DeviceInfo:
    """What a device choice (one of :data:`~napari_icnn.config.DEVICES`) resolves to on this machine."""

    choice: str
    kind: str
    """``"gpu"`` or ``"cpu"``."""
    text: str
    """A short name: ``"GPU · <CUDA device name>"``, ``"CPU"`` or ``"no GPU"``."""
    detail: str
    """Why, and what to do for a GPU."""
    problem: str | None = None
    """Set when the choice cannot be used here (``cuda`` without a CUDA device): :func:`resolve_device`'s error."""


def describe_device(choice: str) -> DeviceInfo:
    """Resolve ``choice`` as training will (:func:`resolve_device`), saying why where there is no GPU."""
    if torch.version.cuda is None:
        why = "This PyTorch build has no CUDA support (a CPU-only build); install a CUDA build of torch to use a GPU."
    else:
        why = f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device (driver, CUDA_VISIBLE_DEVICES)."
    try:
        device = resolve_device(choice)
    except ConfigError as err:
        return DeviceInfo(choice, "cpu", "no GPU", why, problem=str(err))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return DeviceInfo(choice, "gpu", f"GPU · {name}", f"'{choice}' runs on CUDA device {device.index}: {name}.")
    lead = "'auto' runs on the CPU. " if choice == "auto" else "Runs on the CPU. "
    return DeviceInfo(choice, "cpu", "CPU", lead + why)


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when supported and enabled); a no-op elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
