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
    # Under pytest-xdist the cores are shared by the workers: one worker per core gets one thread.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))
    yield
    torch.set_num_threads(n)


def make_bundle(out, *, size: int = 64, n_filters: int = 8, arch: str = "vgg", seed: int = 0, task: str = "referable",
                lesion_types: bool = False):
    """A small real bundle (untrained weights, fixed seed) for tests that need a model but not a good one;
    ``lesion_types``: the referable decision with the lesion types beside it, one type per filter in turn."""
    import torch

    from napari_icnn.bundle import FilterInfo, save_bundle
    from napari_icnn.engine.train import class_names_for
    from napari_icnn.icnn.networks import ICNN

    torch.manual_seed(seed)
    names = class_names_for("referable+lesion-types" if lesion_types else task)
    net = ICNN(arch=arch, n_outputs=len(names), n_filters=n_filters, image_size=size, width=8)
    parts = ["optic_disc", "fovea", "EX", "HE", None, "vessels", "MA", None]
    filters = [FilterInfo(id=i, category="free" if i < 2 else names[1 + i % 4] if lesion_types else names[0],
                          part=parts[i % len(parts)], act_scale=1.0)
               for i in range(n_filters)]
    return save_bundle(out, net.state_dict(), network=net.config, task=task, class_names=names, filters=filters,
                       name="test_model")


def scale_head(bundle, factor: float) -> None:
    """Multiply a bundle's classifier weights by ``factor`` (same decisions, logits ``factor`` times larger),
    recording the new weights' checksum, for tests that need an untrained bundle with logits that matter."""
    import json

    import torch

    from napari_icnn.bundle import sha256_file

    path = bundle / "models" / "model.pt"
    state = torch.load(path, weights_only=True)
    state["fc.weight"] *= factor
    state["fc.bias"] *= factor
    torch.save(state, path)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["icnn"]["model_sha256"] = sha256_file(path)
    meta_path.write_text(json.dumps(meta))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Path of a small real (untrained) bundle shared by the tests of one session. Do not edit it."""
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny")
