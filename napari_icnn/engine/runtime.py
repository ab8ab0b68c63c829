"""Devices, seeding, distributed set-up and atomic file writes shared by the engines."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_icnn.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from napari_icnn.config import DEVICES
from napari_icnn.errors import ConfigError

__all__ = [
    "resolve_device",
    "DeviceInfo",
    "describe_device",
    "seed_everything",
    "DistInfo",
    "init_distributed",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "autocast_for",
]


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a ``torchrun`` job (world size 1 when run plainly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when supported and enabled); a no-op elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
