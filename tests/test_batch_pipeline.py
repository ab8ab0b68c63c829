"""The batch pipeline: worker processes give the same results as one process, a dying worker costs
only its own file, a stop keeps finished rows, a killed run resumes, and a Dask cluster gives the
same rows and outputs as a local run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from output_checks import check_output_folder
from test_batch_data import ct, op, png, truncated

from napari_icnn.batch import BatchConfig, infer, infer_iter
from napari_icnn.errors import Cancelled
from napari_icnn.progress import Progress


def rows_of(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def comparable(out: Path) -> list[tuple]:
    """Rows without order, probabilities to 1e-5 (batches of other sizes round differently); the image
    quality, which does not depend on the batch, exactly."""
    return sorted(
        (r["input_path"], r["frame"], r["sop_instance_uid"], r["status"], r["reason"],
         round(float(r["probability"]), 5) if r["probability"] else None, r["outputs"],
         r["quality"], r["quality_reason"], r["sharpness"], r["brightness"], r["coverage"])
        for r in rows_of(out)
    )


def assert_same_outputs(a: Path, b: Path) -> None:
    import pydicom

    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and not p.name.startswith("."))
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert files_a == files_b
    for rel in files_a:
        if rel.endswith(".json"):
            ja, jb = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
            assert ja["prediction"]["probability"] == pytest.approx(jb["prediction"]["probability"], abs=1e-5)
            assert ja["format_version"] == jb["format_version"] == 4 and ja["gate"] == jb["gate"]
            for group in ("evidence", "context", "possible_artefacts"):
                assert [(f["id"], f["role"]) for f in ja[group]] == [(f["id"], f["role"]) for f in jb[group]]
        elif rel.endswith(".dcm"):
            da, db = (pydicom.dcmread(p, stop_before_pixels=True) for p in (a / rel, b / rel))
            assert da.SOPInstanceUID == db.SOPInstanceUID and da.SeriesInstanceUID == db.SeriesInstanceUID


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed") / "in"
    root.mkdir()
    for i in range(4):
        op(root / f"op{i}.dcm", seed=i, size=192)
    for i in range(3):
        png(root / f"p{i}.png", seed=10 + i, size=192)
    ct(root / "ct")
    truncated(root / "cut.dcm", root.parent)
    return root


@pytest.fixture(scope="module")
def single_process_run(mixed, tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    infer(BatchConfig(inputs=(str(mixed),), out=str(out), model=str(tiny_bundle), workers=0, batch=3))
    return out


def test_worker_processes_give_the_same_rows_and_outputs(mixed, tiny_bundle, single_process_run, tmp_path):
    out = tmp_path / "out"
    summary = infer(BatchConfig(inputs=(str(mixed),), out=str(out), model=str(tiny_bundle), workers=2, batch=4))
    assert (summary.counts.ok, summary.counts.error, summary.counts.declined) == (7, 1, 1)
    assert comparable(out) == comparable(single_process_run)
    assert_same_outputs(out, single_process_run)


_real_prepare = None


def _crashing_prepare(path, size):
    """A decoder that takes its process down on one file (as a segfault would)."""
    if os.path.basename(path) == "p1.png":
        os._exit(11)
    return _real_prepare(path, size)


def test_a_dying_worker_costs_only_its_own_file(mixed, tiny_bundle, single_process_run, tmp_path, monkeypatch):
    global _real_prepare
    from napari_icnn.batch import local, work

    _real_prepare = work.prepare_file
    # fork, so the workers inherit the patched function (spawned ones would import the real one)
    monkeypatch.setattr(local, "_START_METHOD", "fork")
    monkeypatch.setattr(work, "prepare_file", _crashing_prepare)
    out = tmp_path / "out"
    summary = infer(BatchConfig(inputs=(str(mixed),), out=str(out), model=str(tiny_bundle), workers=2, batch=2))
    rows = {Path(r["input_path"]).name: r for r in rows_of(out)}
    assert len(rows_of(out)) == len(rows) == 9
    assert rows["p1.png"]["status"] == "error" and "worker process" in rows["p1.png"]["reason"]
    assert (summary.counts.ok, summary.counts.error, summary.counts.declined) == (6, 2, 1)
    expected = {(Path(r[0]).name, r[3]) for r in comparable(single_process_run)} - {("p1.png", "ok")}
    assert {(n, r["status"]) for n, r in rows.items()} - {("p1.png", "error")} == expected


def test_stop_keeps_finished_rows_and_a_rerun_completes(mixed, tiny_bundle, single_process_run, tmp_path):
    out = tmp_path / "out"
    cfg = BatchConfig(inputs=(str(mixed),), out=str(out), model=str(tiny_bundle), workers=0, batch=2)
    seen = []

    def stop():
        return any(isinstance(e, Progress) and e.stage == "infer" and e.done >= 3 for e in seen)

    gen = infer_iter(cfg, should_stop=stop)
    with pytest.raises(Cancelled):
        for event in gen:
            seen.append(event)
    partial = rows_of(out)
    assert 3 <= len(partial) < 9
    summary = infer(cfg)
    assert summary.counts.skipped == len(partial) and summary.counts.rows == 9 - len(partial)
    assert comparable(out) == comparable(single_process_run)


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(tmp_path, tiny_bundle):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(10):
        op(src / f"op{i:02d}.dcm", seed=i, size=160)
    for i in range(6):
        png(src / f"p{i:02d}.png", seed=20 + i, size=160)
    names = sorted(p.name for p in src.iterdir())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_icnn", "infer", str(src), "--out", str(out), "--model", str(tiny_bundle),
           "--workers", "1", "--batch", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    summary_csv = out / "summary.csv"
    while time.monotonic() < deadline:
        if summary_csv.exists() and len(summary_csv.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker, mid-flight
    proc.wait()
    # What the kill left under final names is whole: results written before their row, none torn.
    killed = check_output_folder(out)
    done_before = len(killed.rows)
    assert 3 <= done_before < 16
    assert {r["status"] for r in killed.rows} == {"ok"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{done_before} skipped" in result.stdout
    done = check_output_folder(out, dciodvfy=True)
    assert sorted(Path(r["input_path"]).name for r in done.rows) == names
    assert {r["status"] for r in done.rows} == {"ok"}
    # One object per result: rewritten in place where the killed run had written it already.
    assert len(done.seg) == len(done.sr) == 10 and len(done.png) == len(done.json) == 16
    assert done.unlisted == []
    # Only a write the kill cut short may leave its (hidden) temporary file behind.
    assert len(done.temporary) <= 2, done.temporary


@pytest.mark.slow
def test_dask_cluster_gives_the_same_rows_and_outputs(mixed, tiny_bundle, single_process_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        summary = infer(BatchConfig(inputs=(str(mixed),), out=str(out), model=str(tiny_bundle),
                                    scheduler=cluster.scheduler_address))
    assert (summary.counts.ok, summary.counts.error, summary.counts.declined) == (7, 1, 1)
    assert comparable(out) == comparable(single_process_run)
    assert_same_outputs(out, single_process_run)


def test_unreachable_scheduler_is_a_usage_error(tmp_path, tiny_bundle, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from napari_icnn.batch import cluster
    from napari_icnn.cli import main

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    png(tmp_path / "a.png")
    code = main(["infer", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--model", str(tiny_bundle),
                 "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot connect to the Dask scheduler" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_workers_that_cannot_see_the_folders_are_named(tmp_path, tiny_bundle):
    from napari_icnn.batch.work import check_worker

    assert check_worker(str(tmp_path), str(tiny_bundle)) is None
    problem = check_worker(str(tmp_path / "elsewhere"), str(tmp_path / "no_model"))
    assert "output folder" in problem and "model bundle" in problem
