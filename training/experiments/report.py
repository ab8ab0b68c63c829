"""Tables (in the paper's form) and figures from the experiment's metrics documents."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.parts import PARTS

__all__ = ["write_report", "aggregate", "per_seed", "summary_over_seeds", "tables_markdown"]

LESIONS = ("MA", "HE", "EX", "SE")


def _ms(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _fmt(m: float, s: float, digits: int = 3) -> str:
    if not np.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if np.isfinite(s) and s > 0 else f"{m:.{digits}f}"


def _explainer_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in doc["records"] if r.get("role", "explainer") == "explainer"]


def aggregate(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(arch, task) -> {model/explainer -> {metric -> list over seeds}}, from the scored-subset documents."""
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in _explainer_records(doc):
        key = f"{r['model']}" if r["explainer"] == "icnn" else r["explainer"]
        m = r["metrics"]
        bucket = out[(r["arch"], r["task"])][key]
        bucket["match_iou"].extend(f.get("match_iou") for f in m.get("per_filter", []) if "match_iou" in f)
    return out


def _key(r: dict[str, Any]) -> str:
    return r["model"] if r["explainer"] == "icnn" else r["explainer"]


def per_seed(doc: dict[str, Any]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(arch, task) -> seed -> {ordinary, icnn, gradcam, occlusion: scored-subset document,
    "classification": {ordinary, icnn: whole-test-cohort document}}."""
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for r in doc["records"]:
        slot = out[(r["arch"], r["task"])][int(r["seed"])]
        if r.get("role") == "classification":
            slot.setdefault("classification", {})[r["model"]] = r["metrics"]
        elif r.get("role") == "lesion-types":
            slot.setdefault("lesion_types", {})[r["model"]] = r["metrics"]
        else:
            slot[_key(r)] = r["metrics"]
    return out


def icnn_arm(seeds: dict[int, dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], bool]:
    """``seeds`` with the lesion-type ICNN standing in as "icnn" where no single-category ICNN was trained (a preset
    with ``single_category=False``), so the paper's tables describe the ICNN there is; and whether it does."""
    if any("icnn" in x for x in seeds.values()) or not any("icnn-types" in x for x in seeds.values()):
        return seeds, False
    out = {}
    for s, x in seeds.items():
        y = {**x, "icnn": x.get("icnn-types")}
        if "classification" in x:
            y["classification"] = {**x["classification"], "icnn": x["classification"].get("icnn-types")}
        out[s] = y
    return out, True


def _arms(doc: dict[str, Any]) -> list[tuple[tuple[str, str], dict[int, dict[str, Any]], str]]:
    """(arch, task), its seeds with :func:`icnn_arm` applied, and what its labels add to the task's name."""
    rows = []
    for key, seeds in sorted(per_seed(doc).items()):
        seeds, types = icnn_arm(seeds)
        rows.append((key, seeds, " (ICNN: lesion types)" if types else ""))
    return rows


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _group(m: dict[str, Any] | None, group: str, metric: str) -> float:
    return _num(((m or {}).get("groups") or {}).get(group, {}).get(metric))


def _part(m: dict[str, Any] | None, part: str, metric: str, field: str | None = None) -> float:
    v = ((m or {}).get("per_part") or {}).get(part, {}).get(metric)
    if field is not None:
        v = (v or {}).get(field) if isinstance(v, dict) else None
    return _num(v)


def _ratio(a: float, b: float) -> float:
    if not (np.isfinite(a) and np.isfinite(b)):
        return float("nan")
    if b == 0:
        return float("inf") if a > 0 else float("nan")
    return a / b


def _v(x: float, digits: int = 3) -> str:
    if x is None or np.isnan(x):
        return "–"
    if np.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def summary_over_seeds(values: dict[int, float], higher_is_better: bool = True) -> dict[str, Any]:
    """Mean of the per-seed values (finite ones) and the worst seed (lowest, or highest when lower is better).

    Seeds without a value (NaN: nothing to score) are left out and counted in ``n`` no more; an infinite ratio
    (the ordinary CNN scored 0) makes the mean infinite too, as it is.
    """
    known = {s: v for s, v in values.items() if v is not None and not np.isnan(v)}
    if not known:
        return {"mean": float("nan"), "worst": float("nan"), "worst_seed": None, "n": 0}
    worst_seed = (min if higher_is_better else max)(known, key=lambda s: known[s])
    return {"mean": float(np.mean(list(known.values()))), "worst": float(known[worst_seed]),
            "worst_seed": worst_seed, "n": len(known)}


def _verdict(summary: dict[str, Any], ok: Any, values: dict[int, float] | None = None) -> str:
    """PASS when the mean and the worst seed meet ``ok``; a seed without a value (``values``: NaN, e.g. 0 / 0)
    cannot be judged, so the bar is not met on it."""
    if summary["worst_seed"] is None:
        return "MISS"
    if values is not None and any(v is None or np.isnan(v) for v in values.values()):
        return "MISS (a seed cannot be judged: –)"
    mean_ok, worst_ok = bool(ok(summary["mean"])), bool(ok(summary["worst"]))
    if mean_ok and worst_ok:
        return "PASS"
    if mean_ok:
        return f"PASS on the mean, MISS on seed {summary['worst_seed']}"
    return "MISS"


def _seed_rows(label: str, seeds: dict[int, dict[str, Any]], columns: list[tuple[str, Any, int]],
               ratio: tuple[str, Any] | None, higher_is_better: bool) -> list[str]:
    """Rows of one seed table: one per seed, the mean over seeds of each column (and of the per-seed ratio),
    and the worst seed by that ratio (or by the first column without one)."""
    rows: list[str] = []
    cols: dict[str, dict[int, Any]] = {name: {} for name, _, _ in columns}
    ratios: dict[int, float] = {}
    for s, slot in sorted(seeds.items()):
        vals = [f(slot) for _, f, _ in columns]
        for (name, _, _), v in zip(columns, vals):
            cols[name][s] = v
        cells = [_v(v, d) for v, (_, _, d) in zip(vals, columns)]
        if ratio is not None:
            ratios[s] = ratio[1](slot)
            cells.append(_v(ratios[s], 2) + "×")
        rows.append(f"| {label} | {s} | " + " | ".join(cells) + " |")
    judged = ratios if ratio is not None else cols[columns[0][0]]
    summ = summary_over_seeds(judged, higher_is_better)
    mean_cells = [_v(summary_over_seeds(cols[name])["mean"], d) for name, _, d in columns]
    if ratio is not None:
        mean_cells.append(f"**{_v(summ['mean'], 2)}×**")
    rows.append(f"| {label} | mean of seeds | " + " | ".join(mean_cells) + " |")
    ws = summ["worst_seed"]
    if ws is not None:
        worst_cells = [_v(cols[name][ws], d) for name, _, d in columns]
        if ratio is not None:
            worst_cells.append(f"**{_v(summ['worst'], 2)}×**")
        rows.append(f"| {label} | worst seed ({ws}) | " + " | ".join(worst_cells) + " |")
    return rows


def _detail(values: dict[int, float], summ: dict[str, Any], digits: int = 2, unit: str = "×") -> str:
    """``"seed 10 1.48×, seed 11 1.95×; mean 1.72×, worst seed 10 1.48×"``."""
    per = ", ".join(f"seed {s} {_v(v, digits)}{unit}" for s, v in sorted(values.items()))
    return f"{per}; mean {_v(summ['mean'], digits)}{unit}, worst seed {summ['worst_seed']} {_v(summ['worst'], digits)}{unit}"


def _bars(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(bar, verdict, detail): each judged on the mean of per-seed figures and on the worst seed."""
    bars: list[tuple[str, str, str]] = []

    for (arch, task), seeds, note in _arms(doc):
        tag = task + note
        for g in ("lesion", "anatomy"):
            r = {s: _ratio(_group(x.get("icnn"), g, "part_interpretability"),
                           _group(x.get("ordinary"), g, "part_interpretability")) for s, x in seeds.items()}
            summ = summary_over_seeds(r)
            bars.append((f"{arch}/{tag}: {g} filters' part interpretability ICNN ≥ 1.5× ordinary",
                         _verdict(summ, lambda v: v >= 1.5, r), _detail(r, summ)))
        for g in ("lesion", "anatomy"):
            r = {s: _ratio(_group(x.get("icnn"), g, "location_instability"),
                           _group(x.get("ordinary"), g, "location_instability")) for s, x in seeds.items()}
            summ = summary_over_seeds(r, higher_is_better=False)
            bars.append((f"{arch}/{tag}: {g} filters' location instability ≥ 30 % lower (ICNN / ordinary ≤ 0.70)",
                         _verdict(summ, lambda v: v <= 0.70, r), _detail(r, summ)))
        if task == "referable":
            d = {s: _num(x.get("classification", {}).get("icnn", {}).get("auc"))
                 - _num(x.get("classification", {}).get("ordinary", {}).get("auc")) for s, x in seeds.items()}
            summ = summary_over_seeds(d)
            bars.append((f"{arch}/{tag}: ICNN AUC within 0.02 of ordinary (ICNN − ordinary ≥ −0.02)",
                         _verdict(summ, lambda v: v >= -0.02, d), _detail(d, summ, 4, "")))
        if any("gradcam" in x for x in seeds.values()):
            r = {s: _ratio(_group(x.get("icnn"), "lesion", "pointing_hit_rate"),
                           _group(x.get("gradcam"), "lesion", "pointing_hit_rate")) for s, x in seeds.items()}
            summ = summary_over_seeds(r)
            bars.append((f"{arch}/{tag}: ICNN lesion filters' peaks on a lesion more often than Grad-CAM's peak",
                         _verdict(summ, lambda v: v > 1.0, r), _detail(r, summ)))
            for part in LESIONS:
                r = {s: _ratio(_part(x.get("icnn"), part, "pointing_matched_mean"),
                               _part(x.get("gradcam"), part, "peak_hit_rate_best_unit", "test"))
                     for s, x in seeds.items()}
                if all(np.isnan(v) for v in r.values()):
                    named = any(x.get("icnn", {}).get("per_part", {}).get(part, {}).get("filters")
                                for x in seeds.values())
                    bars.append((f"{arch}/{tag}: ICNN {PARTS[part].display} filters point better than Grad-CAM",
                                 "MISS", "no seed has a scorable ICNN filter named after it" if not named
                                 else "not scorable (Grad-CAM or the filters have no value)"))
                    continue
                summ = summary_over_seeds(r)
                bars.append((f"{arch}/{tag}: ICNN {PARTS[part].display} filters point better than Grad-CAM",
                             _verdict(summ, lambda v: v > 1.0),
                             _detail(r, summ) + ("; – : no filter named after it in that seed"
                                                 if any(np.isnan(v) for v in r.values()) else "")))
    return bars


def _lt(x: dict[str, Any], model: str) -> dict[str, Any]:
    return (x.get("lesion_types") or {}).get(model) or {}


def _lt_type(x: dict[str, Any], model: str, t: str, key: str) -> float:
    return _num(((_lt(x, model).get("types") or {}).get(t) or {}).get(key))


def _pooled_interval(seeds: dict[int, dict[str, Any]], model: str, t: str, which: str) -> str:
    """", 95 % interval [lo, hi]" of the mean difference over the seeds, from a paired bootstrap of every seed's
    images (resampled within each seed); empty where a seed's document has no per-image figures (older ones)."""
    from napari_icnn.engine.lesion_types import paired_intervals

    records = [((_lt(x, model).get("types") or {}).get(t) or {}).get("per_image") for _, x in sorted(seeds.items())]
    if not records or any(not r for r in records):
        return ""
    iv = paired_intervals(*records)[which]
    return "" if iv is None else f", {iv['level'] * 100:.0f} % interval [{iv['low']:.3f}, {iv['high']:.3f}] (images resampled)"


def lesion_type_bars(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The lesion-type ICNN's bars: filters for every type, lesion part interpretability on every seed, per-type
    pointing and coverage against Grad-CAM of the same model, silence, the top filter, AUC."""
    bars: list[tuple[str, str, str]] = []

    for (arch, task), seeds in sorted(per_seed(doc).items()):
        if not any(_lt(x, "icnn-types") for x in seeds.values()):
            continue
        m = "icnn-types"
        counts = {t: {s: _lt_type(x, m, t, "n_filters") for s, x in seeds.items()} for t in LESIONS}
        empty = [f"{t} (seed {s})" for t in LESIONS for s, v in counts[t].items() if not v > 0]
        bars.append((f"{arch}/{task} lesion types: every lesion type has filters trained for it",
                     "MISS" if empty else "PASS",
                     "; ".join(f"{t}: " + ", ".join(f"{_v(v, 0)}" for _, v in sorted(counts[t].items()))
                               for t in LESIONS) + (f"; none for {', '.join(empty)}" if empty else "")))
        r = {s: _ratio(_group(x.get(m), "lesion", "part_interpretability"),
                       _group(x.get("ordinary"), "lesion", "part_interpretability")) for s, x in seeds.items()}
        summ = summary_over_seeds(r)
        ok = summ["worst_seed"] is not None and summ["worst"] >= 1.5 and summ["n"] == len(r)  # 0 / 0 is no gain
        bars.append((f"{arch}/{task} lesion types: lesion filters' part interpretability ≥ 1.5× ordinary on every "
                     "seed", "PASS" if ok else "MISS", _detail(r, summ)))
        for t in LESIONS:
            for ours, theirs, what in (("icnn_hit_rate", "gradcam_hit_rate", "hit rate (peak in a lesion of the type)"),
                                       ("coverage_icnn", "coverage_gradcam",
                                        "coverage of lesion instances at Grad-CAM's area")):
                vals = {s: _lt_type(x, m, t, ours) - _lt_type(x, m, t, theirs) for s, x in seeds.items()}
                summ = summary_over_seeds(vals)
                pairs = ", ".join(f"seed {s} {_v(_lt_type(x, m, t, ours), 3)} vs {_v(_lt_type(x, m, t, theirs), 3)}"
                                  for s, x in sorted(seeds.items()))
                found = summary_over_seeds({s: _lt_type(x, m, t, ours) for s, x in seeds.items()})["mean"]
                spread = _pooled_interval(seeds, m, t, "hit_rate_difference" if ours == "icnn_hit_rate"
                                          else "coverage_difference")
                # filters that never find their lesion fail the bar even where Grad-CAM does not find it either
                verdict = ("MISS" if summ["worst_seed"] is None else
                           "MISS (neither finds the lesion: 0 vs 0)" if not found > 0 and not summ["mean"] < 0 else
                           "PASS" if summ["mean"] >= 0 else "MISS")
                bars.append((f"{arch}/{task} lesion types: {PARTS[t].display} filters' {what} ≥ Grad-CAM of the "
                             "type's logit (mean over seeds)", verdict,
                             f"ICNN vs Grad-CAM {pairs}; mean difference {_v(summ['mean'], 3)}{spread}"))
        share = {s: _num(np.nanmean([_lt_type(x, m, t, "silent_filters_share") for t in LESIONS]))
                 for s, x in seeds.items()}
        worst = {s: _num(np.nanmin([_lt_type(x, m, t, "silence_worst") for t in LESIONS])) for s, x in seeds.items()}
        summ = summary_over_seeds(share)
        ok = summ["worst_seed"] is not None and summ["worst"] >= 1.0
        bars.append((f"{arch}/{task} lesion types: every filter silent (below its validation threshold) on ≥ 80 % of "
                     "the test images without its type", "PASS" if ok else "MISS",
                     "share of filters meeting it " + ", ".join(f"seed {s} {_v(v, 2)}" for s, v in sorted(share.items()))
                     + "; least silent filter " + ", ".join(f"seed {s} {_v(v, 2)}" for s, v in sorted(worst.items()))))
        top = {s: _num(_lt(x, m).get("top_filter", {}).get("own_type_rate")) for s, x in seeds.items()}
        summ = summary_over_seeds(top)
        bars.append((f"{arch}/{task} lesion types: the top-contributing filter of a referable scan peaks in a lesion "
                     "of its own type on ≥ 60 % of them", _verdict(summ, lambda v: v >= 0.6, top), _detail(top, summ, 2, "")))
        d = {s: _num(x.get("classification", {}).get(m, {}).get("per_class", {}).get("referable DR", {}).get("auc"))
             - _num(x.get("classification", {}).get("ordinary", {}).get("auc")) for s, x in seeds.items()}
        summ = summary_over_seeds(d)
        bars.append((f"{arch}/{task} lesion types: referable AUC within 0.02 of the ordinary CNN's",
                     _verdict(summ, lambda v: v >= -0.02, d), _detail(d, summ, 4, "")))
    return bars


def lesion_types_markdown(doc: dict[str, Any]) -> list[str]:
    """Tables of the lesion-type evidence of both ICNNs (engine.lesion_types), per seed."""
    seeds_all = per_seed(doc)
    if not any(x.get("lesion_types") for seeds in seeds_all.values() for x in seeds.values()):
        return []
    lines = ["", "### Three models: ordinary CNN, ICNN (single category), ICNN (lesion types)", "",
             "Lesion filters' part interpretability (IoU > 0.2 with a lesion of any kind; the ordinary CNN's best "
             "lesion overlap per filter) and the referable AUC on the whole test cohort.", "",
             "| backbone / task | seed | PI ordinary | PI ICNN (single) | PI ICNN (types) | "
             "AUC ordinary | AUC ICNN (single) | AUC ICNN (types) | PI types / ordinary |",
             "|---|---|---|---|---|---|---|---|---|"]

    def auc(x: dict[str, Any], model: str) -> float:
        m = x.get("classification", {}).get(model) or {}
        return _num((m.get("per_class") or {}).get("referable DR", {}).get("auc", m.get("auc")))

    for (arch, task), seeds in sorted(seeds_all.items()):
        lines += _seed_rows(f"{arch} / {task}", seeds, [
            ("o", lambda x: _group(x.get("ordinary"), "lesion", "part_interpretability"), 3),
            ("i", lambda x: _group(x.get("icnn"), "lesion", "part_interpretability"), 3),
            ("t", lambda x: _group(x.get("icnn-types"), "lesion", "part_interpretability"), 3),
            ("ao", lambda x: auc(x, "ordinary"), 4),
            ("ai", lambda x: auc(x, "icnn"), 4),
            ("at", lambda x: auc(x, "icnn-types"), 4),
        ], ("r", lambda x: _ratio(_group(x.get("icnn-types"), "lesion", "part_interpretability"),
                                  _group(x.get("ordinary"), "lesion", "part_interpretability"))), True)
    lines += ["", "### Lesion-type evidence (engine.lesion_types; scored subset, thresholds fixed on validation)", "",
             "ICNN (types): one lesion type per filter; ICNN (single): every filter serves the referable class, so "
             "no filter is trained for a type. Hit rate: a type's filters' peaks inside a lesion of that type, over "
             "the images that have one (mean over the type's filters); Grad-CAM: the peak of Grad-CAM of the same "
             "model for the type's own logit. Coverage: lesion instances with ≥ half their pixels inside the union "
             "of the type's filter regions, Grad-CAM thresholded to the same area. Silence: share of the type's "
             "filters below their firing threshold on ≥ 80 % of the images without the type. Peak AUC: the median over "
             "the type's filters of how well a filter's peak tells images with the type from images without, over "
             "every threshold.", "",
             "| backbone / task | seed | type | filters | hit rate ICNN | hit rate Grad-CAM | coverage ICNN | "
             "coverage Grad-CAM | region / FOV | silence mean (worst) | silent filters | peak AUC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (arch, task), seeds in sorted(seeds_all.items()):
        for s, x in sorted(seeds.items()):
            for t in LESIONS:
                if not _lt(x, "icnn-types"):
                    continue
                g = lambda k, t=t, x=x: _lt_type(x, "icnn-types", t, k)  # noqa: E731
                lines.append(f"| {arch} / {task} | {s} | {t} | {_v(g('n_filters'), 0)} | {_v(g('icnn_hit_rate'), 2)} | "
                             f"{_v(g('gradcam_hit_rate'), 2)} | {_v(g('coverage_icnn'), 2)} | "
                             f"{_v(g('coverage_gradcam'), 2)} | {_v(g('region_fraction_of_fov'), 4)} | "
                             f"{_v(g('silence_mean'), 2)} ({_v(g('silence_worst'), 2)}) | "
                             f"{_v(g('silent_filters_share'), 2)} | {_v(g('peak_auc_median'), 2)} |")
    lines += ["", "Top filter of the referable test scans (the filter contributing most to the referable logit, "
              "against the reference eye): its peak in a lesion of its own type, of any type, and how often it is "
              "an anatomy or label-free filter; Grad-CAM of the referable logit: its peak on any lesion.", "",
              "| backbone / task | seed | model | own type | any lesion | anatomy / label-free | Grad-CAM any lesion | "
              "chance (own type's area) |", "|---|---|---|---|---|---|---|---|"]
    for (arch, task), seeds in sorted(seeds_all.items()):
        for s, x in sorted(seeds.items()):
            for model, label in (("icnn", "ICNN (single)"), ("icnn-types", "ICNN (types)")):
                tf = _lt(x, model).get("top_filter")
                if not tf:
                    continue
                lines.append(f"| {arch} / {task} | {s} | {label} | {_v(_num(tf.get('own_type_rate')), 2)} | "
                             f"{_v(_num(tf.get('any_lesion_rate')), 2)} | {_v(_num(tf.get('context_rate')), 2)} | "
                             f"{_v(_num(_lt(x, model).get('gradcam_decision_any_lesion_rate')), 2)} | "
                             f"{_v(_num(tf.get('own_type_chance')), 4)} |")
    return lines


def tables_markdown(doc: dict[str, Any]) -> str:
    arms = _arms(doc)
    n = len(doc["seeds"])
    sub = doc.get("scored_subset") or {}
    look = f", {doc['look']} photographs" if doc.get("look") else ""
    lines = [f"Preset `{doc['preset']}`{look}, seeds {', '.join(map(str, doc['seeds']))} ({n} seed{'s' if n > 1 else ''}; "
             "every figure per seed, the mean over seeds and the worst seed; ratios are taken per seed and then "
             f"averaged), machine: {doc['machine']}" + (f", GPU {doc['gpu']}" if doc.get("gpu") else "")
             + f"; this run {doc['total_seconds'] / 60:.0f} min.", ""]
    if doc.get("protocol"):
        lines += [f"Training: {doc['protocol']}.", ""]
    if sub:
        lines += [f"Scored images: every explainer (ICNN filters, ordinary filters, Grad-CAM, occlusion) on the same "
                  f"{sub['images']} of the {sub['of']} test images per seed ({sub['rule']}); classification and "
                  "calibration on the whole test cohort. Filters are chosen (best filter per part, parts paired "
                  "with the ordinary CNN's filters) on the validation cohort.", ""]
    if any(note for _, _, note in arms):
        lines += ["ICNN (lesion types): this preset trains no single-category ICNN, so the ICNN columns of the tables "
                  "in the paper's form are the lesion-type ICNN's.", ""]
    lines += ["Lesion filters: the ICNN's category filters that did not match the optic disc, fovea or vessels; "
              "anatomy filters: its label-free filters and those matched to an anatomy part. The ordinary CNN has "
              "no categories: all its filters are scored in both groups, each against that group's parts only.", ""]
    for g, parts_txt in (("lesion", "a lesion of any kind"), ("anatomy", "the optic disc, fovea or vessels")):
        lines += [f"### Part interpretability, {g} filters (IoU > 0.2 with {parts_txt}; IoU > 0.04 beside it)", "",
                  "| backbone / task | seed | ordinary CNN | ICNN | ordinary (> 0.04) | ICNN (> 0.04) | ICNN / ordinary |",
                  "|---|---|---|---|---|---|---|"]
        for (arch, task), seeds, note in arms:
            label = f"{arch} / {task}{note}"
            lines += _seed_rows(label, seeds, [
                ("o", lambda x, g=g: _group(x.get("ordinary"), g, "part_interpretability"), 3),
                ("i", lambda x, g=g: _group(x.get("icnn"), g, "part_interpretability"), 3),
                ("o4", lambda x, g=g: _group(x.get("ordinary"), g, "part_interpretability_iou04"), 3),
                ("i4", lambda x, g=g: _group(x.get("icnn"), g, "part_interpretability_iou04"), 3),
            ], ("r", lambda x, g=g: _ratio(_group(x.get("icnn"), g, "part_interpretability"),
                                           _group(x.get("ordinary"), g, "part_interpretability"))), True)
        lines.append("")
    for g in ("lesion", "anatomy"):
        lines += [f"### Location instability, {g} filters (lower is better; chance ≈ 0.1; worst seed: highest ratio)",
                  "", "| backbone / task | seed | ordinary CNN | ICNN | ICNN / ordinary |", "|---|---|---|---|---|"]
        for (arch, task), seeds, note in arms:
            label = f"{arch} / {task}{note}"
            lines += _seed_rows(label, seeds, [
                ("o", lambda x, g=g: _group(x.get("ordinary"), g, "location_instability"), 4),
                ("i", lambda x, g=g: _group(x.get("icnn"), g, "location_instability"), 4),
            ], ("r", lambda x, g=g: _ratio(_group(x.get("icnn"), g, "location_instability"),
                                           _group(x.get("ordinary"), g, "location_instability"))), False)
        lines.append("")
    for g, parts_txt in (("lesion", "on a lesion of any kind"), ("anatomy", "on the optic disc, fovea or a vessel")):
        lines += [f"### Pointing game, {g} filters (peak {parts_txt}, over the images that have one)", "",
                  "Filters: mean over the group's filters; Grad-CAM and occlusion: the heat map's peak; chance: "
                  "the group's parts' share of the field of view.", "",
                  "| backbone / task | seed | ordinary CNN | ICNN | Grad-CAM | occlusion | chance | ICNN / Grad-CAM |",
                  "|---|---|---|---|---|---|---|---|"]
        for (arch, task), seeds, note in arms:
            label = f"{arch} / {task}{note}"
            lines += _seed_rows(label, seeds, [
                ("o", lambda x, g=g: _group(x.get("ordinary"), g, "pointing_hit_rate"), 3),
                ("i", lambda x, g=g: _group(x.get("icnn"), g, "pointing_hit_rate"), 3),
                ("g", lambda x, g=g: _group(x.get("gradcam"), g, "pointing_hit_rate"), 3),
                ("c", lambda x, g=g: _group(x.get("occlusion"), g, "pointing_hit_rate"), 3),
                ("h", lambda x, g=g: _group(x.get("icnn"), g, "pointing_chance"), 3),
            ], ("r", lambda x, g=g: _ratio(_group(x.get("icnn"), g, "pointing_hit_rate"),
                                           _group(x.get("gradcam"), g, "pointing_hit_rate"))), True)
        lines.append("")
    lines += ["### Pointing game per part (peak inside a part of the filter's kind)", "",
              "Per seed (in seed order), then the mean over seeds and the worst seed. ICNN / ordinary filters: mean "
              "hit rate of the filters named after the part (ordinary CNN: named on the validation cohort); ICNN "
              "best filter: the filter whose peak hit the part most often on the validation cohort, scored on the "
              "test images; ICNN top filter: each image's most contributing filter; Grad-CAM, occlusion: the heat "
              "map's peak; –: no filter named after the part in that seed.", "",
              "| backbone / task | part | ICNN filters | ICNN best filter (chosen on validation) | ICNN top filter | "
              "ordinary filters | Grad-CAM peak | occlusion peak | chance |",
              "|---|---|---|---|---|---|---|---|---|"]

    def cell(seeds: dict[int, dict[str, Any]], f: Any) -> str:
        vals = {s: f(x) for s, x in sorted(seeds.items())}
        summ = summary_over_seeds(vals)
        per = " · ".join(_v(v) for v in vals.values())
        if summ["worst_seed"] is None:
            return per
        return f"{per}; mean {_v(summ['mean'])}, worst {_v(summ['worst'])} (seed {summ['worst_seed']})"

    for (arch, task), seeds, note in arms:
        label = f"{arch} / {task}{note}"
        for part in PARTS:
            if not any(part in (x.get("icnn", {}).get("per_part") or {}) for x in seeds.values()):
                continue
            lines.append(
                f"| {label} | {PARTS[part].display} | "
                f"{cell(seeds, lambda x, p=part: _part(x.get('icnn'), p, 'pointing_matched_mean'))} | "
                f"{cell(seeds, lambda x, p=part: _part(x.get('icnn'), p, 'peak_hit_rate_best_unit', 'test'))} | "
                f"{cell(seeds, lambda x, p=part: _part(x.get('icnn'), p, 'top_filter_hit_rate'))} | "
                f"{cell(seeds, lambda x, p=part: _part(x.get('ordinary'), p, 'pointing_matched_mean'))} | "
                f"{cell(seeds, lambda x, p=part: _part(x.get('gradcam'), p, 'peak_hit_rate_best_unit', 'test'))} | "
                f"{cell(seeds, lambda x, p=part: _part(x.get('occlusion'), p, 'peak_hit_rate_best_unit', 'test'))} | "
                f"{' · '.join(_v(_part(x.get('icnn'), part, 'chance'), 4) for _, x in sorted(seeds.items()))} |")
    lines += ["", "### Classification and calibration on the whole test cohort", "",
              "| backbone / task | seed | model | AUC | accuracy | sensitivity at 90 % specificity | ECE uncalibrated | "
              "ECE calibrated (temperature) |", "|---|---|---|---|---|---|---|---|"]
    for (arch, task), seeds, note in arms:
        label = f"{arch} / {task}{note}"
        for model in ("ordinary", "icnn"):
            per: dict[str, dict[int, float]] = defaultdict(dict)
            for s, x in sorted(seeds.items()):
                m = x.get("classification", {}).get(model) or {}
                ece = m.get("ece") or {}
                vals = {"auc": _num(m.get("auc")), "acc": _num(m.get("accuracy")),
                        "sens": _num(m.get("sensitivity_at_90_specificity")),
                        "eu": _num(ece.get("uncalibrated")), "ec": _num(ece.get("calibrated"))}
                for k, v in vals.items():
                    per[k][s] = v
                lines.append(f"| {label} | {s} | {'ICNN' if model == 'icnn' else 'ordinary CNN'} | "
                             f"{_v(vals['auc'], 4)} | {_v(vals['acc'])} | {_v(vals['sens'])} | {_v(vals['eu'])} | "
                             f"{_v(vals['ec'])} ({_v(_num(ece.get('temperature')), 2)}) |")
            sums = {k: summary_over_seeds(v, higher_is_better=k not in ("eu", "ec")) for k, v in per.items()}
            if sums:
                lines.append(f"| {label} | mean (worst) | {'ICNN' if model == 'icnn' else 'ordinary CNN'} | "
                             + " | ".join(f"{_v(sums[k]['mean'], 4 if k == 'auc' else 3)} "
                                          f"({_v(sums[k]['worst'], 4 if k == 'auc' else 3)}, seed {sums[k]['worst_seed']})"
                                          for k in ("auc", "acc", "sens", "eu", "ec")) + " |")
    lines += lesion_types_markdown(doc)
    lines += ["", "### Bars (judged on the mean of per-seed figures and on the worst seed)", ""]
    for text, verdict, det in _bars(doc) + lesion_type_bars(doc):
        lines.append(f"- {verdict} — {text}: {det}")
    lines += ["", "### Training times (s)", "", "| run | seconds |", "|---|---|"]
    for k, v in doc["train_seconds"].items():
        lines.append(f"| {k} | {v:.0f} |")
    return "\n".join(lines) + "\n"


def _iou_histogram(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(doc)
    fig, axes = plt.subplots(1, len(agg), figsize=(5 * len(agg), 3.2), squeeze=False)
    for ax, ((arch, task), b) in zip(axes[0], sorted(agg.items())):
        if "icnn" not in b and "icnn-types" in b:
            b = {**b, "icnn": b["icnn-types"]}
        bins = np.linspace(0, max(0.05, max([v for m in ("ordinary", "icnn") for v in b.get(m, {}).get("match_iou", [0])
                                              if v is not None] + [0.05])), 25)
        for model, colour in (("ordinary", "#888888"), ("icnn", "#d62728")):
            vals = [v for v in b.get(model, {}).get("match_iou", []) if v is not None]
            ax.hist(vals, bins=bins, alpha=0.6, color=colour, label=f"{'ICNN' if model == 'icnn' else 'ordinary'} "
                    f"({len(vals)} filters)")
        ax.set_title(f"{arch} / {task}")
        ax.set_xlabel("per-filter mean IoU with its best part")
        ax.set_ylabel("filters")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _montage(root: Path, doc: dict[str, Any], path: Path, n_images: int = 4, k: int = 4) -> None:
    """The same test images explained by the ordinary CNN and the ICNN: their top-k filters' maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.image_io import load_image
    from napari_icnn.explain import explain
    from napari_icnn.render import blend, heat_rgba

    first = _explainer_records(doc)[0]
    s, arch, task = first["seed"], first["arch"], first["task"]
    test = root / "data" / f"seed{s}" / "test"
    import csv

    with open(test / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["referable"] == "1" and int(r["n_EX"]) + int(r["n_HE"]) > 0]
    rows = rows[:n_images]
    runs = root / "runs" / f"seed{s}"
    icnn = "icnn" if (runs / f"{arch}-{task}-icnn").is_dir() else "icnn-types"
    models = {m: load_bundle(runs / f"{arch}-{task}-{m}", device="cpu") for m in ("ordinary", icnn)}
    fig, axes = plt.subplots(2 * len(rows), k + 1, figsize=(2.2 * (k + 1), 2.3 * 2 * len(rows)))
    for r_i, row in enumerate(rows):
        img = load_image(test / "images" / f"{row['id']}.png")[0]
        for m_i, (mname, model) in enumerate(models.items()):
            e = explain(img, model)
            ax_row = axes[2 * r_i + m_i]
            ax_row[0].imshow(img.pixels)
            ax_row[0].set_title(f"{row['id']} · {'ordinary' if mname == 'ordinary' else 'ICNN'}\np={e.probability:.2f}",
                                fontsize=7)
            for j, f in enumerate(e.top(k)):
                ax_row[j + 1].imshow(blend(img.pixels, heat_rgba(e.map_on_scan(f.id))))
                ax_row[j + 1].set_title(f.name.replace("filter ", "f"), fontsize=7)
            for ax in ax_row:
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(root: Path, preset: Any, doc: dict[str, Any]) -> None:
    root = Path(root)
    (root / "results.json").write_text(json.dumps(doc, indent=2, default=float))
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    md = tables_markdown(doc)
    try:
        _iou_histogram(doc, figures / "iou_histogram.png")
        _montage(root, doc, figures / "montage.png")
        md += "\n![per-filter IoU](figures/iou_histogram.png)\n\n![montage](figures/montage.png)\n"
    except Exception as err:  # noqa: BLE001 - tables are still worth having without figures
        md += f"\n(figures could not be drawn: {type(err).__name__}: {err})\n"
    (root / "results.md").write_text(md)
