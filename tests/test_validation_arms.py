"""Two recipes compared over several trainings each: per-training figures, the mean and the worst."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.experiments.arms import compare_arms, main, table_markdown, validation_figures  # noqa: E402


def _doc(top: float, hits: dict[str, float], silence: dict[str, list[float]], auc: float = 0.9) -> dict:
    return {
        "decision_auc": auc,
        "top_filter": {"own_type_rate": top},
        "types": {t: {"icnn_hit_rate": hits[t], "gradcam_hit_rate": 0.5, "silence_per_filter": silence[t],
                      "silent_filters_share": sum(s >= 0.8 for s in silence[t]) / len(silence[t]),
                      "peak_auc_median": 0.8 if t == "MA" else None, "output_auc": 0.9 if t == "MA" else None}
                  for t in ("MA", "HE", "EX", "SE")},
    }


SILENT = {"MA": [0.9, 0.7], "HE": [0.85, 0.95], "EX": [1.0, 1.0], "SE": [0.8, 0.79]}


def test_figures_of_one_training_pool_every_filter_for_the_silent_share_and_mean():
    f = validation_figures(_doc(0.8, {"MA": 0.4, "HE": 0.8, "EX": 0.9, "SE": 1.0}, SILENT))
    assert f["hit_mean"] == pytest.approx(0.775)
    assert f["silent_share"] == pytest.approx(6 / 8)  # 0.8 is at the bar; 0.79 and 0.7 are under it
    assert f["silence_mean"] == pytest.approx(sum(sum(v) for v in SILENT.values()) / 8)
    assert f["silent_share_MA"] == pytest.approx(0.5) and f["peak_auc_MA"] == pytest.approx(0.8)
    assert f["output_auc_MA"] == pytest.approx(0.9)
    older = _doc(0.8, {"MA": 0.4, "HE": 0.8, "EX": 0.9, "SE": 1.0}, SILENT)
    del older["types"]["MA"]["output_auc"]  # documents written before the figure existed
    assert np.isnan(validation_figures(older)["output_auc_MA"])


def test_each_arm_keeps_every_training_with_its_mean_and_worst_in_the_right_direction():
    hits = {"MA": 0.4, "HE": 0.8, "EX": 0.9, "SE": 1.0}
    base = [_doc(0.84, hits, SILENT, auc=0.93), _doc(0.80, hits, SILENT, auc=0.96)]
    new = [_doc(0.90, hits, SILENT, auc=0.95)]
    c = compare_arms(base, new)
    assert c["top_own"]["base"] == {"values": [0.84, 0.80], "mean": pytest.approx(0.82), "worst": 0.80}
    assert c["auc"]["base"]["worst"] == 0.93 and c["top_own"]["new"]["values"] == [0.90]
    md = table_markdown(c, ("default", "384 px"))
    assert "| figure | default | 384 px |" in md
    assert "0.840 · 0.800 (mean 0.820, worst 0.800)" in md


def test_a_document_without_a_lesion_type_is_refused_naming_the_file(tmp_path, capsys):
    good = tmp_path / "a.json"
    good.write_text(json.dumps(_doc(0.8, {"MA": 0.4, "HE": 0.8, "EX": 0.9, "SE": 1.0}, SILENT)))
    bad_doc = _doc(0.8, {"MA": 0.4, "HE": 0.8, "EX": 0.9, "SE": 1.0}, SILENT)
    del bad_doc["types"]["SE"]
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps(bad_doc))
    with pytest.raises(SystemExit) as exc:
        main(["--base", str(good), "--new", str(bad)])
    assert exc.value.code == 2
    assert "b.json: not a lesion-type figures document (the document has no figures for SE)" in capsys.readouterr().err
    assert main(["--base", str(good), "--new", str(good)]) == 0
