"""Shared fixtures. GUI tests get a real X server from pytest-xvfb (Xvfb + Mesa)."""

from __future__ import annotations

import os

import pytest

# Deterministic, CPU-only, single-machine behaviour in every test.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("NAPARI_ICNN_NOPERSIST", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    """Keep each test on a fixed thread count so timings and numerics are stable."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(n)
