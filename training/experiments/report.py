"""Tables (in the paper's form) and figures from the experiment's metrics documents."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.parts import PARTS

__all__ = ["write_report", "aggregate"]

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


def aggregate(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(arch, task) -> {model/explainer -> {metric -> list over seeds}} and per-part pointing."""
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in doc["records"]:
        key = f"{r['model']}" if r["explainer"] == "icnn" else r["explainer"]
        m = r["metrics"]
        bucket = out[(r["arch"], r["task"])][key]
        for k in ("auc", "accuracy", "sensitivity_at_90_specificity", "part_interpretability",
                  "part_interpretability_iou04", "location_instability", "location_instability_optic_disc",
                  "location_instability_fovea", "pointing_hit_rate", "pointing_hit_rate_tolerance", "dead_filters"):
            if k in m:
                bucket[k].append(m[k])
        for part, pp in (m.get("per_part") or {}).items():
            bucket[f"point_mean:{part}"].append(pp.get("pointing_matched_mean"))
            bucket[f"point_best:{part}"].append(pp.get("pointing_matched_best"))
            bucket[f"peak:{part}"].append(pp.get("peak_hit_rate_best_unit"))
            bucket[f"top:{part}"].append(pp.get("top_filter_hit_rate"))
            bucket[f"chance:{part}"].append(pp.get("chance"))
            bucket[f"n_filters:{part}"].append(len(pp.get("filters") or []))
        bucket["match_iou"].extend(f.get("match_iou") for f in m.get("per_filter", []) if "match_iou" in f)
    return out


def _bars(agg: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    bars = []
    for (arch, task), b in sorted(agg.items()):
        o, i = b.get("ordinary", {}), b.get("icnn", {})
        if not o or not i:
            continue
        po, pi = _ms(o["part_interpretability"])[0], _ms(i["part_interpretability"])[0]
        lo, li = _ms(o["location_instability"])[0], _ms(i["location_instability"])[0]
        ao, ai = _ms(o["auc"])[0], _ms(i["auc"])[0]
        ratio = pi / po if po > 0 else float("inf")
        drop = 1 - li / lo if lo > 0 else float("nan")
        bars.append((f"{arch}/{task}: part interpretability ICNN ≥ 1.5× ordinary", ratio >= 1.5,
                     f"{pi:.3f} vs {po:.3f} = {ratio:.2f}×"))
        bars.append((f"{arch}/{task}: location instability ≥ 30 % lower", drop >= 0.30,
                     f"{li:.4f} vs {lo:.4f} = {100 * drop:.0f} % lower"))
        if task == "referable":
            bars.append((f"{arch}/{task}: ICNN AUC within 0.02 of ordinary", ai >= ao - 0.02,
                         f"{ai:.4f} vs {ao:.4f} (Δ {ai - ao:+.4f})"))
        g = b.get("gradcam", {})
        if g:
            for part in LESIONS:
                pi_k = _ms(i.get(f"point_mean:{part}", []))[0]
                pb_k = _ms(i.get(f"point_best:{part}", []))[0]
                pt_k = _ms(i.get(f"top:{part}", []))[0]
                pg_k = _ms(g.get(f"peak:{part}", []))[0]
                if np.isfinite(pg_k):
                    ok = bool(np.isfinite(pi_k) and pi_k > pg_k)
                    top = f"; the top-contributing filter of each image {pt_k:.3f}" if np.isfinite(pt_k) else ""
                    bars.append((f"{arch}/{task}: ICNN {PARTS[part].display} filters point better than Grad-CAM's peak",
                                 ok, (f"{pi_k:.3f} (best filter {pb_k:.3f})" if np.isfinite(pi_k)
                                      else f"no ICNN filter named {PARTS[part].display}") + f" vs {pg_k:.3f}{top}"))
    return bars


def tables_markdown(doc: dict[str, Any]) -> str:
    agg = aggregate(doc)
    n = len(doc["seeds"])
    lines = [f"Preset `{doc['preset']}`, seeds {', '.join(map(str, doc['seeds']))} (mean ± sd over {n} seed"
             f"{'s' if n > 1 else ''}), machine: {doc['machine']}" + (f", GPU {doc['gpu']}" if doc.get("gpu") else "")
             + f"; total {doc['total_seconds'] / 60:.0f} min.", ""]
    if doc.get("protocol"):
        lines += [f"Training: {doc['protocol']}.", ""]
    lines += ["### Part interpretability (fraction of images with IoU > 0.2; IoU > 0.04 in brackets)", "",
              "| backbone / task | ordinary CNN | ICNN | ICNN / ordinary |", "|---|---|---|---|"]
    for (arch, task), b in sorted(agg.items()):
        o, i = b.get("ordinary", {}), b.get("icnn", {})
        po, pi = _ms(o.get("part_interpretability", [])), _ms(i.get("part_interpretability", []))
        qo, qi = _ms(o.get("part_interpretability_iou04", [])), _ms(i.get("part_interpretability_iou04", []))
        ratio = pi[0] / po[0] if po[0] > 0 else float("nan")
        lines.append(f"| {arch} / {task} | {_fmt(*po)} ({_fmt(*qo)}) | {_fmt(*pi)} ({_fmt(*qi)}) | {ratio:.2f}× |")
    lines += ["", "### Location instability (lower is better; chance ≈ 0.1)", "",
              "| backbone / task | model | optic disc | fovea | mean | change |", "|---|---|---|---|---|---|"]
    for (arch, task), b in sorted(agg.items()):
        base = _ms(b.get("ordinary", {}).get("location_instability", []))[0]
        for model in ("ordinary", "icnn"):
            m = b.get(model, {})
            mean = _ms(m.get("location_instability", []))
            change = "" if model == "ordinary" or not base > 0 else f"{100 * (mean[0] / base - 1):+.0f} %"
            lines.append(f"| {arch} / {task} | {'ICNN' if model == 'icnn' else 'ordinary CNN'} | "
                         f"{_fmt(*_ms(m.get('location_instability_optic_disc', [])), 4)} | "
                         f"{_fmt(*_ms(m.get('location_instability_fovea', [])), 4)} | {_fmt(*mean, 4)} | {change} |")
    lines += ["", "### Pointing game per part (peak inside a part of the filter's matched kind)", "",
              "ICNN / ordinary: mean hit rate of the filters named after the part (mean number of such filters); "
              "ICNN top filter: the peak of each image's most contributing filter (the first evidence a reader "
              "sees); Grad-CAM and occlusion: hit rate of the heat map's peak; chance: the part's share of the "
              "field of view.", "",
              "| backbone / task | part | ICNN filters | ICNN top filter | ordinary filters | Grad-CAM peak | "
              "occlusion peak | chance |",
              "|---|---|---|---|---|---|---|---|"]
    for (arch, task), b in sorted(agg.items()):
        for part in PARTS:
            if not b.get("icnn", {}).get(f"chance:{part}"):
                continue

            def cell(model: str, kind: str, b: dict = b, part: str = part) -> str:
                m = b.get(model, {})
                v = _ms(m.get(f"{kind}:{part}", []))
                nf = m.get(f"n_filters:{part}", [])
                extra = f" ({np.mean(nf):.1f})" if kind == "point_mean" and nf else ""
                return _fmt(*v) + extra

            lines.append(f"| {arch} / {task} | {PARTS[part].display} | {cell('icnn', 'point_mean')} | "
                         f"{cell('icnn', 'top')} | {cell('ordinary', 'point_mean')} | {cell('gradcam', 'peak')} | {cell('occlusion', 'peak')} | "
                         f"{_fmt(*_ms(b['icnn'][f'chance:{part}']), 4)} |")
    lines += ["", "### Classification on the test cohort", "",
              "| backbone / task | model | AUC | accuracy | sensitivity at 90 % specificity |", "|---|---|---|---|---|"]
    for (arch, task), b in sorted(agg.items()):
        for model in ("ordinary", "icnn"):
            m = b.get(model, {})
            lines.append(f"| {arch} / {task} | {'ICNN' if model == 'icnn' else 'ordinary CNN'} | "
                         f"{_fmt(*_ms(m.get('auc', [])), 4)} | {_fmt(*_ms(m.get('accuracy', [])), 3)} | "
                         f"{_fmt(*_ms(m.get('sensitivity_at_90_specificity', [])), 3)} |")
    lines += ["", "### Bars", ""]
    for text, ok, detail in _bars(agg):
        lines.append(f"- {'PASS' if ok else 'MISS'} — {text}: {detail}")
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

    first = doc["records"][0]
    s, arch, task = first["seed"], first["arch"], first["task"]
    test = root / "data" / f"seed{s}" / "test"
    import csv

    with open(test / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["referable"] == "1" and int(r["n_EX"]) + int(r["n_HE"]) > 0]
    rows = rows[:n_images]
    models = {m: load_bundle(root / "runs" / f"seed{s}" / f"{arch}-{task}-{m}", device="cpu")
              for m in ("ordinary", "icnn")}
    fig, axes = plt.subplots(2 * len(rows), k + 1, figsize=(2.2 * (k + 1), 2.3 * 2 * len(rows)))
    for r_i, row in enumerate(rows):
        img = load_image(test / "images" / f"{row['id']}.png")[0]
        for m_i, (mname, model) in enumerate(models.items()):
            e = explain(img, model)
            ax_row = axes[2 * r_i + m_i]
            ax_row[0].imshow(img.pixels)
            ax_row[0].set_title(f"{row['id']} · {'ICNN' if mname == 'icnn' else 'ordinary'}\np={e.probability:.2f}",
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
