"""``python -m training.experiments.shortcut``: right for the wrong reasons, measured.

For each seed and each confounder rate P, the same eyes are drawn with a site stamp (or, with ``--kind``, a logo or
a rim notch) on a share P of the referable
photographs and 1 - P of the others; an ordinary CNN is trained on them, and the lesion-type ICNN fine-tuned from it
(the study's two-stage recipe, smaller and at 128 px so that 18 models train on a 2-core CPU). Every model is then

- scored on test cohorts of the same eyes with the training correlation (rate P) and with it reversed (1 - P): the
  AUC it loses is the shortcut's cost;
- audited (``icnn audit``) on the neutral test cohort (P = 0.5, the stamp on half of every class), with the
  artefact masks and without them: the stamp's
  share of the evidence for the decision, the findings, and a Grad-CAM audit of the same model on the same cells.

Seeds, rates, cohort sizes and the audit's thresholds are fixed before any run; nothing is chosen on the test
cohorts. Results: ``OUT/shortcut.json`` and ``OUT/shortcut.md``; each model's audit folder under ``OUT/audits``, its
test AUCs under ``OUT/scores``. Re-running into ``OUT`` resumes: what is there is not done again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from training.experiments.presets import Preset

PROG = "python -m training.experiments.shortcut"
SEEDS = (10, 11, 12)
RATES = (0.5, 0.7, 0.9)
KIND = "stamp"
UNMASKED = {"stamp": "text", "logo": "text", "notch": "rim"}
"""Where an audit without artefact masks finds each kind: print as burned-in text, a notch on the rim."""
STUDY = Preset(
    name="shortcut", n_train=600, n_val=150, n_test=300, image_size=384, size=128, epochs=10, warmup=5,
    finetune_epochs=5, look="realistic", seeds=SEEDS,
)  # fmt: skip
MODELS = ("ordinary", "icnn")


def _rate_tag(p: float) -> str:
    return f"p{round(100 * p):02d}"


def _cohort(path: Path, n: int, seed: int, rate: float, kind: str = KIND) -> Generator[Any, None, None]:
    from napari_icnn.data.synth import generate_cohort, is_cohort

    if is_cohort(path) and json.loads((path / "cohort.json").read_text()).get("complete", False):
        return
    yield from generate_cohort(path, n, size=STUDY.image_size, seed=seed, workers=1, overwrite=True,
                               look="realistic", confounder=kind, confounder_rate=rate)


def _auc(bundle: Path, data: Path) -> float:
    from napari_icnn.engine.evaluate import evaluate

    return float(evaluate(str(bundle), str(data), explainer="icnn")["auc"])


def study_iter(out: Path, seeds: Sequence[int] = SEEDS, rates: Sequence[float] = RATES,
               device: str = "cpu", kind: str = KIND) -> Generator[Any, None, dict[str, Any]]:
    """Run (or resume) the shortcut study of the site artefact ``kind`` into ``out``; yields progress, returns the
    results document. Each model is audited twice on the neutral cohort: with the artefact masks, and without any
    (where the audit can only find the artefact as burned-in text or on the rim)."""
    from napari_icnn.audit.measure import audit_iter
    from napari_icnn.audit.report import write_audit
    from napari_icnn.progress import Message
    from training.experiments.driver import _train

    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for s in seeds:
        data = out / "data" / f"seed{s}"
        tests = sorted({r for p in rates for r in (p, round(1 - p, 2), 0.5)})
        for r in tests:
            yield Message(f"seed {s}: test cohort at rate {r:g}")
            yield from _cohort(data / f"test-{_rate_tag(r)}", STUDY.n_test, 1000 * s + 13, r, kind)
        for p in rates:
            cohorts = data / _rate_tag(p)
            yield Message(f"seed {s}, rate {p:g}: training cohorts")
            yield from _cohort(cohorts / "train", STUDY.n_train, 1000 * s + 11, p, kind)
            yield from _cohort(cohorts / "val", STUDY.n_val, 1000 * s + 12, p, kind)
            for model in MODELS:
                name = f"{model}-{_rate_tag(p)}"
                bundle = out / "runs" / f"seed{s}" / name
                init = out / "runs" / f"seed{s}" / f"ordinary-{_rate_tag(p)}" if model == "icnn" else None
                yield Message(f"seed {s}: training {name}")
                # as in the main study: the ordinary CNN predicts the decision alone, the ICNN adds lesion types
                seconds = yield from _train(bundle, cohorts, STUDY, "vgg", "referable", s, model == "ordinary",
                                            device, init, "decision" if model == "ordinary" else "lesion-types")
                done = out / "audits" / f"seed{s}" / name / "audit.json"
                if not done.is_file():
                    yield Message(f"seed {s}: auditing {name}")
                    res = yield from audit_iter(str(bundle), str(data / "test-p50"), device=device)
                    write_audit(res, done.parent, figures=2)
                bare = out / "audits-without-masks" / f"seed{s}" / name / "audit.json"
                if not bare.is_file():
                    yield Message(f"seed {s}: auditing {name} without artefact masks")
                    empty = out / "no-masks"
                    empty.mkdir(exist_ok=True)
                    res = yield from audit_iter(str(bundle), str(data / "test-p50"), device=device, gradcam=False,
                                                artefact_masks=str(empty))
                    write_audit(res, bare.parent, figures=0)
                audit = json.loads(done.read_text())
                unmasked = json.loads(bare.read_text())
                scored = out / "scores" / f"seed{s}" / f"{name}.json"
                if not scored.is_file():
                    yield Message(f"seed {s}: scoring {name} on the test cohorts")
                    aucs = {"auc_same": _auc(bundle, data / f"test-{_rate_tag(p)}"),
                            "auc_reversed": _auc(bundle, data / f"test-{_rate_tag(round(1 - p, 2))}"),
                            "auc_neutral": _auc(bundle, data / "test-p50"),
                            # as measured when it trained (a resumed run reads back the last epoch's time only)
                            "train_seconds": round(seconds, 1)}
                    scored.parent.mkdir(parents=True, exist_ok=True)
                    scored.write_text(json.dumps(aucs))
                aucs = json.loads(scored.read_text())
                auc_in, auc_rev, auc_neutral = aucs["auc_same"], aucs["auc_reversed"], aucs["auc_neutral"]
                art = audit["places"]["artefact"]
                rows.append({
                    "seed": s, "rate": p, "model": model, "train_seconds": aucs.get("train_seconds"),
                    "auc_same": auc_in, "auc_reversed": auc_rev, "auc_neutral": auc_neutral,
                    "drop": auc_in - auc_rev,
                    "artefact_share": art["evidence_share"], "artefact_majority": art["referable_scans_mostly_on_it"],
                    "gradcam_share": art.get("gradcam_share"),
                    "gradcam_majority": art.get("gradcam_referable_scans_mostly_on_it"),
                    "artefact_cells": art["area"],
                    "unmasked_place": UNMASKED[kind],
                    "unmasked_share": unmasked["places"][UNMASKED[kind]]["evidence_share"],
                    "unmasked_cells": unmasked["places"][UNMASKED[kind]]["area"],
                    "shortcut_findings_without_masks": [f["place"] for f in unmasked["findings"]
                                                        if f["kind"] == "shortcut"],
                    "shortcut_findings": [f["place"] for f in audit["findings"] if f["kind"] == "shortcut"],
                    "carriers": next((f["filters"] for f in audit["findings"]
                                      if f["kind"] == "shortcut" and f["place"] == "artefact"), []),
                    "artefact_location_filters": [f["filters"][0] for f in audit["findings"]
                                               if f["kind"] == "location" and f["place"] == "artefact"],
                })
                yield Message(f"seed {s} {name}: AUC {auc_in:.3f} -> {auc_rev:.3f} reversed; {kind} share "
                              f"{art['evidence_share']}, Grad-CAM {art.get('gradcam_share')}")
    doc = {"kind": kind, "seeds": list(seeds), "rates": list(rates), "preset": STUDY.__dict__ | {"seeds": list(seeds)},
           "rows": rows, "spearman": _spearmans(rows), "seconds": round(time.monotonic() - t0, 1)}
    (out / "shortcut.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "shortcut.md").write_text(report(doc))
    return doc


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties given their mean rank); NaN when either side is constant."""
    from scipy import stats

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _spearmans(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for key in ("artefact_share", "gradcam_share", "unmasked_share"):
        for models in (("ordinary", "icnn"), ("ordinary",), ("icnn",)):
            pick = [r for r in rows if r["model"] in models and r[key] is not None]
            if len(pick) >= 3:
                out[f"{key}:{'+'.join(models)}"] = spearman([r[key] for r in pick], [r["drop"] for r in pick])
    return out


def report(doc: dict[str, Any]) -> str:
    """The study's tables in Markdown."""
    kind = doc["kind"]
    lines = [f"# Shortcut study: site {kind} at rates {', '.join(map(str, doc['rates']))}, seeds "
             f"{', '.join(map(str, doc['seeds']))}", "",
             f"| seed | rate P | model | AUC (P) | AUC (1-P) | drop | AUC (0.5) | evidence on the {kind} | referable "
             f"scans mostly on it | Grad-CAM share | shortcut finding | carriers | without masks: evidence on "
             f"{UNMASKED[kind]} | finding |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        found = "yes" if "artefact" in r["shortcut_findings"] else "no"
        bare = "yes" if r["unmasked_place"] in r["shortcut_findings_without_masks"] else "no"
        lines.append(f"| {r['seed']} | {r['rate']:g} | {r['model']} | {r['auc_same']:.3f} | {r['auc_reversed']:.3f} | "
                     f"{r['drop']:+.3f} | {r['auc_neutral']:.3f} | {r['artefact_share']:.3f} | "
                     f"{r['artefact_majority']:.2f} | {r['gradcam_share']:.3f} | {found} | "
                     f"{', '.join(map(str, r['carriers'])) or '-'} | {r['unmasked_share']:.3f} | {bare} |")
    lines += ["", "Per rate and model: mean over seeds (worst seed: the largest drop, the smallest share).", "",
              f"| rate P | model | drop mean | drop worst | {kind} share mean | smallest | Grad-CAM share mean | "
              "shortcut findings | without masks |", "|---|---|---|---|---|---|---|---|---|"]
    for p in doc["rates"]:
        for m in MODELS:
            rs = [r for r in doc["rows"] if r["rate"] == p and r["model"] == m]
            if not rs:
                continue
            found = sum("artefact" in r["shortcut_findings"] for r in rs)
            bare = sum(r["unmasked_place"] in r["shortcut_findings_without_masks"] for r in rs)
            lines.append(
                f"| {p:g} | {m} | {sum(r['drop'] for r in rs) / len(rs):+.3f} | {max(r['drop'] for r in rs):+.3f} | "
                f"{sum(r['artefact_share'] for r in rs) / len(rs):.3f} | {min(r['artefact_share'] for r in rs):.3f} | "
                f"{sum(r['gradcam_share'] for r in rs) / len(rs):.3f} | {found} of {len(rs)} seeds | "
                f"{bare} of {len(rs)} |")
    lines += ["", f"Spearman (share of the evidence on the {kind} vs the AUC drop on the reversed cohort):", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in doc["spearman"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from napari_icnn.progress import TextProgress, drain

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__)
    ap.add_argument("--out", required=True, help="study folder (re-running into it resumes)")
    ap.add_argument("--seed", type=int, action="append", help="run only this seed (repeat for several)")
    ap.add_argument("--rate", type=float, action="append", help="run only this rate (repeat for several)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kind", default=KIND, choices=tuple(UNMASKED), help="the site artefact (default: %(default)s)")
    args = ap.parse_args(argv)
    doc = drain(study_iter(Path(args.out), tuple(args.seed or SEEDS), tuple(args.rate or RATES), args.device,
                           args.kind), TextProgress())
    print(report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
