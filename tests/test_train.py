"""The training engine: real MONAI training steps on small synthetic cohorts, resume after kill -9, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_icnn.bundle import load_bundle, read_metadata
from napari_icnn.config import TrainConfig
from napari_icnn.data.synth import write_cohort
from napari_icnn.engine.train import train
from napari_icnn.errors import ConfigError

SMALL = dict(size=64, batch=8, n_filters=8, width=8, cache="memory", augment=True)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohorts")
    write_cohort(root / "train", 48, size=128, seed=101, look="clean")
    write_cohort(root / "val", 16, size=128, seed=102, look="clean")
    return root


def _cfg(cohorts, out, **kw):
    return TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(out),
                       **{**SMALL, "epochs": 2, "warmup_epochs": 1, **kw})


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "napari_icnn", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_icnn_training_writes_a_loadable_bundle_with_filter_metadata(cohorts, tmp_path):
    events = []
    # 8-px cells: two epochs on 32 small images are too few for a 4-px map's filters to earn a part's name
    result = train(_cfg(cohorts, tmp_path / "m", top_stride=8), on_event=events.append)
    assert result.epochs_done == 2 and not result.stopped
    assert result.best_epoch == 2  # only mask-on epochs are eligible for an ICNN
    hist = result.history
    assert hist[0]["lambda"] == 0 and hist[1]["lambda"] == pytest.approx(0.3)
    assert hist[1]["lambda_effective"] > 100  # the calibrated scale of the paper's tiny loss
    assert hist[0]["filter_loss"] == 0 and hist[1]["filter_loss"] != 0
    m = load_bundle(result.bundle, device="cpu")
    assert m.net.interpretable and m.net.mask.enabled
    cats = [f.category for f in m.filters]
    # synthetic cohorts carry lesion presence labels: the category filters are shared out over the lesion types
    assert cats.count("free") == 2 and sorted(c for c in cats if c != "free") == ["EX", "HE", "HE", "MA", "MA", "SE"]
    assert m.class_names == ["referable DR", "MA", "HE", "EX", "SE"] and m.decision_index == 0
    named = [f for f in m.filters if f.part]  # matched on the annotated validation cohort, where peaks back it
    assert named and all(f.part_hit_rate is not None and f.part_score > 0 for f in named)
    assert all(f.part_hit_rate is None for f in m.filters if not f.part)
    meta = read_metadata(result.bundle)
    assert meta["icnn"]["best_epoch"] == 2
    assert json.loads((result.bundle / "configs" / "train.json").read_text())["epochs"] == 2
    assert any(type(e).__name__ == "EpochEnd" for e in events)


def test_training_with_several_part_locations_per_filter_records_them(cohorts, tmp_path):
    result = train(_cfg(cohorts, tmp_path / "p", top_stride=8, template_peaks=3, peak_ratio=0.3))
    assert result.history[1]["filter_loss"] != 0
    m = load_bundle(result.bundle, device="cpu")
    assert (m.net.mask.peaks, m.net.mask.peak_ratio) == (3, 0.3)
    assert read_metadata(result.bundle)["icnn"]["network"]["peaks"] == 3
    with pytest.raises(ConfigError, match="--template-peaks"):
        _cfg(cohorts, tmp_path / "q", template_peaks=0)
    with pytest.raises(ConfigError, match="--peak-ratio"):
        _cfg(cohorts, tmp_path / "q", template_peaks=2, peak_ratio=1.5)


def test_ordinary_training_has_no_mask_and_no_filter_loss(cohorts, tmp_path):
    result = train(_cfg(cohorts, tmp_path / "o", ordinary=True))
    assert all(h["filter_loss"] == 0 and h["lambda"] == 0 for h in result.history)
    m = load_bundle(result.bundle, device="cpu")
    assert not m.net.interpretable and not m.net.mask.enabled
    assert all(f.category is None for f in m.filters)


def test_cpu_runs_are_reproducible_for_a_seed(cohorts, tmp_path):
    a = train(_cfg(cohorts, tmp_path / "a", epochs=1, warmup_epochs=0))
    b = train(_cfg(cohorts, tmp_path / "b", epochs=1, warmup_epochs=0))
    sa = load_bundle(a.bundle, device="cpu").net.state_dict()
    sb = load_bundle(b.bundle, device="cpu").net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # what the same weights also need, on record: another thread count sums floats in another order
    assert read_metadata(a.bundle)["icnn"]["compute"] == {"device": "cpu", "threads": torch.get_num_threads()}


def test_existing_output_is_never_overwritten(cohorts, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        train(_cfg(cohorts, out))
    assert (out / "precious.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "nothing"), resume=True))


def test_fine_tuning_starts_from_a_bundle(cohorts, tmp_path):
    base = train(_cfg(cohorts, tmp_path / "base", epochs=1, warmup_epochs=0)).bundle
    w0 = load_bundle(base, device="cpu").net.state_dict()
    tuned = train(_cfg(cohorts, tmp_path / "tuned", epochs=1, warmup_epochs=0, init=str(base), lr=1e-9))
    w1 = load_bundle(tuned.bundle, device="cpu").net.state_dict()
    # with a vanishing learning rate the fine-tuned weights stay at the initial bundle's
    conv = "conv.weight"
    assert torch.allclose(w0[conv], w1[conv], atol=1e-5)


def test_fine_tuning_an_icnn_starts_its_filter_categories_from_what_they_respond_to(cohorts, tmp_path, monkeypatch):
    """Retraining an interpretable model on local data: the filter assignment is fitted to the initial model's
    responses on the training images before the first step; an ordinary CNN's start (the two-stage recipe) is not."""
    from napari_icnn.engine import train as engine

    base = train(_cfg(cohorts, tmp_path / "base", epochs=1, warmup_epochs=0)).bundle
    ordinary = train(_cfg(cohorts, tmp_path / "ordinary", epochs=1, warmup_epochs=1, ordinary=True,
                          categories="decision")).bundle
    said = "filter categories start from the initial model's responses on the training images"
    seen: list[tuple[bool, bool, bool]] = []
    warm = engine._warm_assignment

    def spy(net, loader, device, assignment, cfg, *rest):
        warm(net, loader, device, assignment, cfg, *rest)
        # every type seen on eyes with and without it: the first matching is the statistics', not a deal; matched
        # by lesion hits, every type's lesions seen too
        seen.append((bool(assignment.initialised.all()), bool(assignment.negatives_seen.all()),
                     bool(assignment.hits_seen.all())))

    monkeypatch.setattr(engine, "_warm_assignment", spy)
    events: list = []
    train(_cfg(cohorts, tmp_path / "tuned", epochs=1, warmup_epochs=0, init=str(base), lr=1e-9),
          on_event=events.append)
    assert any(getattr(e, "text", "") == said for e in events) and seen == [(True, True, False)]
    train(_cfg(cohorts, tmp_path / "tuned-hits", epochs=1, warmup_epochs=0, init=str(base), lr=1e-9,
               match_filters_by="lesion-hits"))
    assert seen[1] == (True, True, True)
    events.clear()
    train(_cfg(cohorts, tmp_path / "icnn", epochs=1, warmup_epochs=0, init=str(ordinary)), on_event=events.append)
    assert not any(getattr(e, "text", "") == said for e in events) and len(seen) == 2


def test_cli_rejects_bad_options_with_a_message(cohorts, tmp_path):
    p = _cli("--data", cohorts / "train", "--out", tmp_path / "x", "--size", "100")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "--size" in err and "Traceback" not in err
    p = _cli("--data", tmp_path / "missing", "--out", tmp_path / "y")
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "missing" in err and "Traceback" not in err


@pytest.mark.slow
def test_kill_9_during_training_then_resume_finishes_the_run(cohorts, tmp_path):
    out = tmp_path / "run"
    args = ["--data", cohorts / "train", "--val", cohorts / "val", "--out", out, "--epochs", "4",
            "--warmup-epochs", "1", "--size", "64", "--batch", "8", "--filters", "8"]
    proc = _cli(*args, start_new_session=True)
    history = out / "checkpoints" / "history.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("training ended before it could be killed: " + proc.stderr.read()[-2000:])
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(json.loads(history.read_text()))
    assert 2 <= done < 4
    resumed = _cli("--out", out, "--resume")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert f"resumed after epoch {done}" in stdout + stderr
    hist = json.loads(history.read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    load_bundle(out, device="cpu")


@pytest.mark.slow
def test_torchrun_with_two_processes_trains(cohorts, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "napari_icnn",
         "train", "--data", str(cohorts / "train"), "--val", str(cohorts / "val"), "--out", str(out),
         "--epochs", "2", "--warmup-epochs", "1", "--size", "64", "--batch", "8", "--filters", "8",
         "--match-filters-by", "lesion-hits"],  # the hit rates are gathered from both processes too
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 processes" in proc.stdout + proc.stderr
    hist = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assignment = torch.load(out / "checkpoints" / "best.pt", weights_only=True)["assignment"]
    assert assignment["hits_seen"].all()
    m = load_bundle(out, device="cpu")
    assert m.net.interpretable
    assert Path(out / "models" / "model.pt").is_file()


def test_label_free_filters_get_no_classification_gradient_when_template_only():
    import torch.nn.functional as F

    from napari_icnn.icnn.networks import ICNN

    torch.manual_seed(0)
    net = ICNN(n_filters=6, image_size=64, width=8).train()
    x, y = torch.randn(4, 3, 64, 64), torch.ones(4, 1)
    for k, expect_zero in ((0, False), (2, True)):
        net.zero_grad()
        net.template_only = k
        F.binary_cross_entropy_with_logits(net(x).logits, y).backward()
        g = net.conv.weight.grad
        assert (g[:2].abs().sum() == 0) == expect_zero
        assert g[2:].abs().sum() > 0
    net.eval()
    with torch.no_grad():  # at inference every filter reaches the classifier as usual
        out = net(x)
        assert torch.allclose(out.logits, net.head(out.masked))


def test_a_later_epoch_wins_a_tie_in_validation_auc_but_not_a_real_drop():
    from napari_icnn.engine.train import BEST_TOLERANCE, _takes_over

    best = {"score": 0.990, "epoch": 4, "eligible": True}
    assert _takes_over(0.990 - BEST_TOLERANCE / 2, best)  # noise: the later, better-settled epoch is kept
    assert not _takes_over(0.990 - 2 * BEST_TOLERANCE, best)
    assert _takes_over(0.5, {"score": float("-inf"), "epoch": 0})  # the first eligible epoch always counts


def test_training_on_a_dicom_folder_names_the_files_it_leaves_out(cohorts, tmp_path):
    """A .dcm file that is not DICOM beside the labelled ones: training goes on without it and says so."""
    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.dicom.op_writer import write_op
    from napari_icnn.progress import Message

    rows = ["sop_instance_uid,label"]
    for i in range(8):
        ds = write_op(tmp_path / "pacs" / f"IM{i}.dcm", generate_fundus(i, size=96).image, laterality="R")
        rows.append(f"{ds.SOPInstanceUID},{i % 2}")
    (tmp_path / "pacs" / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "pacs" / "IM8.dcm").write_bytes(b"exported by mistake")
    events = []
    result = train(TrainConfig(data=str(tmp_path / "pacs"), val=str(cohorts / "val"), out=str(tmp_path / "m"),
                               ordinary=True, **{**SMALL, "epochs": 1, "warmup_epochs": 0}), on_event=events.append)
    assert result.epochs_done == 1
    said = [e.text for e in events if isinstance(e, Message) and "left out" in e.text]
    assert said == [f"left out 1 file(s) that could not be read: {tmp_path / 'pacs' / 'IM8.dcm'}: not a DICOM file"]
