"""The shortcut study's script (python -m training.experiments.shortcut) on a tiny configuration: cohorts with the
stamp at P, 1-P and 0.5 of the same eyes, both models trained, audited and scored, the report written, a rerun that
does nothing again; and its rank correlation against scipy's."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from training.experiments import shortcut


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, 18).astype(float).tolist()  # many ties, as the drop of every rate-0.5 model is 0
    y = (np.asarray(x) * 0.5 + rng.normal(0, 1, 18)).round(1).tolist()
    assert shortcut.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(shortcut.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.slow
def test_tiny_shortcut_study_runs_reports_and_resumes(tmp_path, monkeypatch):
    from napari_icnn.progress import Message, drain

    tiny = replace(shortcut.STUDY, n_train=24, n_val=12, n_test=12, image_size=160, size=64, epochs=1, warmup=0,
                   finetune_epochs=1, train={"batch": 8, "n_filters": 8, "width": 8})
    monkeypatch.setattr(shortcut, "STUDY", tiny)
    doc = drain(shortcut.study_iter(tmp_path, seeds=(3,), rates=(0.9,)))
    assert [(r["rate"], r["model"]) for r in doc["rows"]] == [(0.9, "ordinary"), (0.9, "icnn")]
    data = tmp_path / "data" / "seed3"
    # the test cohorts hold the same eyes; the stamp follows the label at 0.9, against it at 0.1, not at all at 0.5
    labels = {}
    for tag in ("test-p10", "test-p50", "test-p90"):
        rows = (data / tag / "labels.csv").read_text().splitlines()
        head = rows[0].split(",")
        cells = [dict(zip(head, r.split(","))) for r in rows[1:]]
        labels[tag] = [(c["id"], c["referable"], c["n_HE"], c["confounder"]) for c in cells]
    assert [x[:3] for x in labels["test-p10"]] == [x[:3] for x in labels["test-p90"]] == [x[:3] for x in
                                                                                           labels["test-p50"]]
    assert [x[3] for x in labels["test-p10"]] != [x[3] for x in labels["test-p90"]]
    for r in doc["rows"]:
        assert 0.0 <= r["auc_reversed"] <= 1.0 and r["drop"] == pytest.approx(r["auc_same"] - r["auc_reversed"])
        assert 0.0 <= r["artefact_share"] <= 1.0
        audit = json.loads((tmp_path / "audits" / "seed3" / f"{r['model']}-p90" / "audit.json").read_text())
        assert audit["data"]["path"].endswith("test-p50") and audit["artefact"] == "the site stamp"
        bare = json.loads((tmp_path / "audits-without-masks" / "seed3" / f"{r['model']}-p90" / "audit.json").read_text())
        assert bare["places"]["artefact"]["scans"] == 0  # found, if at all, as burned-in text
        assert r["unmasked_place"] == "text" and r["unmasked_share"] == bare["places"]["text"]["evidence_share"]
    report = (tmp_path / "shortcut.md").read_text()
    assert "| 3 | 0.9 | ordinary |" in report and "Spearman" in report
    assert json.loads((tmp_path / "shortcut.json").read_text())["rows"] == json.loads(json.dumps(doc["rows"]))

    # a rerun trains, audits and scores nothing again
    events = []
    again = drain(shortcut.study_iter(tmp_path, seeds=(3,), rates=(0.9,)), events.append)
    said = [e.text for e in events if isinstance(e, Message)]
    assert not any("auditing" in t or "scoring" in t for t in said), said
    assert again["rows"] == doc["rows"]
