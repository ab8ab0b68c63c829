"""``icnn demo``: the product end to end on this machine, the clinician's view first.

By default (a few minutes on a 2-core CPU) it works with the model shipped in the package, on the synthetic
photographs of a clinic whose handheld camera that model rarely saw:

1. the clinic's scans: a small synthetic cohort (realistic look) with DICOM copies;
2. Explain with the shipped model: a referable scan of the clinic and the real photograph scikit-image ships
   (PNG overlays per filter, ``explanation.json`` and one summary sheet each);
3. the DICOM batch job over the clinic's scans (DICOM SEG + SR per scan, ``summary.csv``);
4. retraining on local data: the shipped model fine-tuned on other photographs of the same clinic;
5. before / after on the held-out scans: AUC, accuracy and where the top evidence lies, for the shipped and the
   fine-tuned model on the same images (a table, ``before_after.json``), and both explanations of one scan side
   by side (``before_after.png``).

``--full`` instead trains an interpretable CNN from scratch (an ordinary CNN, then the interpretable
fine-tuning that starts from it: the recipe of the shipped model, about 55 minutes on a 2-core CPU),
evaluates it on an unseen cohort, explains and batch-processes with it. ``--quick`` makes either a smoke run.
Everything lands in ``--out``, whose ``README.txt`` says what each output is.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from napari_icnn.config import DEVICES

__all__ = ["register", "run"]

MARKER = "demo.json"
CONTENTS = "README.txt"
TOP_K = 4
"""Filters reported per group (evidence, context, possible artefacts) in the demo's explanations."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser(
        "demo",
        help="explain and batch-process a clinic's synthetic scans with the shipped model, then retrain it on "
        "them (--full: train from scratch)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo-output", help="output folder (created; must be new or a previous demo)")
    p.add_argument("--full", action="store_true",
                   help="train an interpretable CNN from scratch instead of fine-tuning the shipped one (about 55 "
                        "minutes on a 2-core CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run of the same steps (about a minute) to check the installation")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohorts and the training")
    p.add_argument("--napari", action="store_true", help="open the explained scan in napari at the end")
    p.set_defaults(func=run)


class _Contents:
    """``README.txt`` of the output folder: what each output is, rewritten as each one is finished (so an
    interrupted demo's folder still says what it holds)."""

    def __init__(self, out: Path, heading: str):
        self.out = out
        self.heading = heading
        self.entries: list[tuple[str, str]] = []

    def add(self, path: str, what: str) -> None:
        self.entries.append((path, what))
        width = max(len(p) for p, _ in self.entries)
        lines = [self.heading, ""] + [f"{p:<{width}s}  {w}" for p, w in self.entries]
        (self.out / CONTENTS).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def print(self) -> None:
        width = max((len(p) for p, _ in self.entries), default=0)
        for p, w in self.entries:
            print(f"  {p:<{width}s}  {w}")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def _took(t: float) -> None:
    print(f"   ({time.monotonic() - t:.0f} s)", flush=True)


def _prepare(out: Path, marker: dict[str, Any]) -> None:
    """Make ``out`` the demo's folder: new, empty or a previous demo (replaced); anything else is refused."""
    from napari_icnn.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"--out {out}: exists, is not empty and is not a previous demo; choose another folder")
    if (out / MARKER).exists():
        import shutil

        print(f"replacing the previous demo in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({**marker, "complete": False}, indent=2))


def _finish(out: Path, started: float, **extra: Any) -> float:
    marker = json.loads((out / MARKER).read_text())
    total = time.monotonic() - started
    (out / MARKER).write_text(json.dumps({**marker, **extra, "complete": True, "seconds": round(total, 1)},
                                         indent=2))
    return total


def run(args: argparse.Namespace) -> int:
    """Run the demo into ``--out`` (see the module docstring); 0."""
    return _run_full(args) if args.full else _run_clinic(args)


# -- the default: the shipped model on a clinic's scans, then retrained on them ------------------------------


def _run_clinic(args: argparse.Namespace) -> int:
    import numpy as np
    import skimage.data

    from napari_icnn.bundle import load_bundle, shipped_bundle_path
    from napari_icnn.config import TrainConfig
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.engine.lesion_types import lesion_type_figures_iter
    from napari_icnn.engine.train import train
    from napari_icnn.errors import Cancelled
    from napari_icnn.image import FundusImage
    from napari_icnn.progress import TextProgress, drain
    from napari_icnn.recipes import RETRAINING

    r = RETRAINING["quick" if args.quick else "demo"]
    out = Path(args.out)
    _prepare(out, {"mode": "fine-tune the shipped model", "retraining": asdict(r), "seed": args.seed})
    started = time.monotonic()
    contents = _Contents(out, f"icnn demo: the shipped model on a clinic's synthetic scans ({', '.join(r.cameras)} "
                              "camera), then fine-tuned on the clinic's own photographs. Research use only.")
    contents.add(MARKER, "what this demo ran (settings, whether it completed, its time)")
    show = TextProgress()
    s = args.seed
    shipped = shipped_bundle_path()
    camera = ", ".join(r.cameras)
    data = out / "data"
    test_dir, train_dir, val_dir = data / "clinic-test", data / "clinic-train", data / "clinic-val"
    ft_dir = out / "model-finetuned"

    t = _step(f"1/5  the clinic's scans: {r.n_test} synthetic photographs from a {camera} camera (realistic look), "
              "with DICOM copies")
    summary = drain(generate_cohort(test_dir, r.n_test, size=r.image_size, seed=1000 * s + 13, dicom=True,
                                    workers=2, look="realistic", cameras=r.cameras), show)
    print("   " + summary.describe())
    contents.add("data/clinic-test/", f"the clinic's scans ({camera} camera), held out from any training: images/ "
                 "(PNG), dicom/ (Ophthalmic Photography DICOM), masks/ (exact lesion and anatomy masks), labels.csv")
    _took(t)

    t = _step("2/5  Explain with the shipped model: a referable scan of the clinic and scikit-image's real "
              "photograph")
    model = load_bundle(shipped, device=args.device)
    print(f"   model: {shipped} (the model shipped in the package; {model.metadata.get('description', '')})")
    scan, row, before = _referable_scan(test_dir, model)
    _explain_and_write(scan, before, out / "explain_synthetic", f"clinic scan {row['id']} (truth: "
                       f"{'referable' if row['referable'] == '1' else 'not referable'}, ICDR grade {row['grade']})")
    contents.add("explain_synthetic/", f"the shipped model's explanation of clinic scan {row['id']}: summary.png "
                 "(the evidence sheet), one PNG overlay per reported filter, explanation.json")
    real = FundusImage(pixels=np.ascontiguousarray(skimage.data.retina()), source="skimage.data.retina()",
                       laterality="L")
    _explain_and_write(real, _explain(real, model), out / "explain_real_photograph",
                       "scikit-image's real photograph (a healthy left eye)")
    contents.add("explain_real_photograph/", "the same for scikit-image's real fundus photograph")
    _took(t)

    t = _step("3/5  DICOM batch inference with the shipped model over the clinic's DICOM files (DICOM SEG + SR "
              "per scan)")
    _batch(test_dir / "dicom", out / "batch", None, args.device, show)
    contents.add("batch/", "the batch job's results: summary.csv (one row per scan: verdict, probability, image "
                 "quality, outputs), per scan a DICOM SEG (filter regions), a DICOM SR (findings), an evidence "
                 "sheet PNG and a JSON")
    _took(t)

    t = _step(f"4/5  retraining on local data: fine-tuning the shipped model on {r.n_train} other photographs of "
              f"the clinic ({r.n_val} for validation; {r.epochs} epoch{'s' if r.epochs != 1 else ''}, "
              f"learning rate {r.lr:g})")
    for folder, n, seed in ((train_dir, r.n_train, 1000 * s + 11), (val_dir, r.n_val, 1000 * s + 12)):
        summary = drain(generate_cohort(folder, n, size=r.image_size, seed=seed, workers=2, look="realistic",
                                        cameras=r.cameras), show)
        print("   " + summary.describe())
    contents.add("data/clinic-train/, clinic-val/", "the clinic's photographs the fine-tuning learnt from and "
                 "validated on (other patients than clinic-test)")
    result = train(TrainConfig(data=str(train_dir), val=str(val_dir), out=str(ft_dir), init=str(shipped),
                               epochs=r.epochs, warmup_epochs=0, lr=r.lr, size=model.size, device=args.device,
                               seed=s), on_event=show)
    if result.stopped:
        where = f"; the model of its best epoch so far is in {ft_dir}" if result.best_epoch else ""
        raise Cancelled(f"the fine-tuning was interrupted after {result.epochs_done} of {r.epochs} epochs{where}; "
                        f"the outputs so far are in {out} ({CONTENTS} lists them)")
    print(f"   fine-tuned in {result.seconds:.0f} s (best epoch {result.best_epoch} of {r.epochs}) -> {ft_dir}")
    contents.add("model-finetuned/", "the fine-tuned model (a MONAI bundle; open it in the Explain widget or pass "
                 "--model to icnn explain / icnn infer); checkpoints/ holds its training history")
    _took(t)

    t = _step("5/5  before / after on the clinic's held-out scans: the shipped model and the fine-tuned one on the "
              "same images")
    figures = {}
    for key, path in (("shipped", shipped), ("fine_tuned", ft_dir)):
        print(f"   scoring the {key.replace('_', '-')} model ...")
        figures[key] = drain(lesion_type_figures_iter(str(path), str(test_dir), str(val_dir), device=args.device,
                                                      gradcam=False), show)
    doc = _comparison(figures, test_dir, val_dir, train_dir, r, result, shipped, ft_dir)
    (out / "before_after.json").write_text(json.dumps(doc, indent=2))
    _print_comparison(doc)
    after = _explain(scan, load_bundle(ft_dir, device=args.device))
    _before_after_figure(scan, before, after, test_dir, row, out / "before_after.png")
    print(f"   written {out / 'before_after.json'} and {out / 'before_after.png'} (clinic scan {row['id']}: "
          "both explanations side by side)")
    contents.add("before_after.json", "the comparison: AUC, accuracy and where the top evidence of referable scans "
                 "lies, for both models on the same held-out scans (their ids included)")
    contents.add("before_after.png", f"clinic scan {row['id']} explained by the shipped model (top row) and the "
                 "fine-tuned one (bottom row), true lesions outlined")
    _took(t)

    total = _finish(out, started)
    print(f"\nDone in {total / 60:.1f} min. Outputs in {out}/ (also listed in {out / CONTENTS}):")
    contents.print()
    print(f"Open a scan in napari:  napari {test_dir / 'images' / (row['id'] + '.png')}  then Plugins > "
          f"Interpretable fundus CNN > Explain (model: the shipped one, or the folder {ft_dir}).")
    print("Train your own from scratch:  icnn demo --full")
    if args.napari:
        _open_napari(test_dir / "images" / f"{row['id']}.png", ft_dir)
    return 0


def _explain(image: Any, model: Any) -> Any:
    """The explanation with the verdict kept whatever the image-quality gate says (it says so itself)."""
    from napari_icnn.explain import explain

    return explain(image, model, gate=False)


def _referable_scan(cohort: Path, model: Any) -> tuple[Any, dict[str, str], Any]:
    """The first referable scan of ``cohort`` (by id) that the image-quality gate passes, its labels row and the
    shipped model's explanation; the first scan when none is (a tiny cohort)."""
    from napari_icnn.data.image_io import load_image

    with open(cohort / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    ordered = [r for r in rows if r["referable"] == "1"] + [r for r in rows if r["referable"] != "1"]
    first = None
    for row in ordered:
        image = load_image(cohort / "images" / f"{row['id']}.png")[0]
        expl = _explain(image, model)
        if first is None:
            first = (image, row, expl)
        if row["referable"] == "1" and (expl.gate is None or not expl.gate.declined):
            return image, row, expl
    assert first is not None, "a cohort has at least one scan"
    return first


def _explain_and_write(image: Any, expl: Any, folder: Path, what: str) -> None:
    """Write the overlays, ``explanation.json`` and ``summary.png`` (the batch job's evidence sheet) of one
    explanation into ``folder``; print the verdict, the evidence and the paths."""
    import io

    from PIL import Image

    from napari_icnn.batch.outputs import reported_filters, sheet_array
    from napari_icnn.cli.explain import print_filters
    from napari_icnn.explain import lesion_type_summary, write_explanation

    written = write_explanation(expl, image, folder, top_k=TOP_K)
    buf = io.BytesIO()
    Image.fromarray(sheet_array(image, expl, reported_filters(expl, TOP_K))).save(buf, format="PNG")
    (folder / "summary.png").write_bytes(buf.getvalue())
    gate = "" if expl.gate is None else f"; image quality: {expl.gate.message}"
    print(f"   {what}: {expl.predicted_class} (p = {expl.probability:.3f}){gate}")
    print(f"     lesion types: {lesion_type_summary(expl)}")
    print_filters(expl, TOP_K, indent="     ", peaks=False)
    overlays = [p for p in written if p.suffix == ".png"]
    print(f"     figures: {folder / 'summary.png'} (summary sheet), {len(overlays)} overlays "
          f"({', '.join(p.name for p in overlays[:2])}{', ...' if len(overlays) > 2 else ''}), "
          f"{folder / 'explanation.json'}")


def _batch(inputs: Path, out: Path, model: str | None, device: str, show: Any) -> None:
    from napari_icnn.batch import BatchConfig, infer

    summary = infer(BatchConfig(inputs=(str(inputs),), out=str(out), model=model, device=device), on_event=show)
    print(f"   {summary.n_ok} ok, {summary.n_error} error, {summary.n_declined} declined "
          f"({summary.images_per_second:.1f} scans/s) -> {summary.summary_csv}")
    with open(summary.summary_csv, newline="", encoding="utf-8") as fh:
        done = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    if done:
        example = done[0]["outputs"].split(";")
        seg = next((o for o in example if o.endswith(".seg.dcm")), None)
        sr = next((o for o in example if o.endswith(".sr.dcm")), None)
        if seg and sr:
            print(f"   e.g. {Path(done[0]['input_path']).name}: {out / seg} (SEG), {out / sr} (SR)")


# -- before / after ------------------------------------------------------------------------------------------


def _figures(doc: dict[str, Any]) -> dict[str, Any]:
    top = doc["top_filter"]
    return {"auc": doc["decision_auc"], "accuracy": doc["decision_accuracy"],
            "top_evidence_in_own_lesion_type": top["own_type_rate"],
            "top_evidence_in_any_lesion": top["any_lesion_rate"],
            "top_evidence_on_anatomy_or_label_free": top["context_rate"],
            "own_lesion_type_chance": top["own_type_chance"],
            "referable_scans": top["referable_images"]}


def _comparison(figures: dict[str, dict[str, Any]], test: Path, val: Path, train_dir: Path, r: Any,
                result: Any, shipped: Path, ft: Path) -> dict[str, Any]:
    before, after = figures["shipped"], figures["fine_tuned"]
    assert before["data"]["ids"] == after["data"]["ids"], "both models are scored on the same images"
    return {
        "what": ("the shipped model and its fine-tuning on the clinic's photographs, scored on the same held-out "
                 "scans of the clinic (never used in training or validation)"),
        "held_out": {"path": str(test), "cameras": list(r.cameras), "images": before["data"]["images"],
                     "referable": before["data"]["referable"], "ids": before["data"]["ids"]},
        "fine_tuning": {"init": str(shipped), "out": str(ft), "train": str(train_dir), "n_train": r.n_train,
                        "val": str(val), "n_val": r.n_val, "epochs": r.epochs, "lr": r.lr,
                        "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1)},
        "definitions": {
            "auc": "area under the ROC curve of the referable-DR decision",
            "accuracy": "share of scans whose verdict (calibrated probability against the model's threshold) is "
                        "right",
            "top_evidence_in_own_lesion_type": "share of the referable scans whose most contributing filter is a "
                                               "lesion-type filter peaking inside a lesion of its own type",
            "own_lesion_type_chance": "the share of the field that type's lesions cover: what a random peak scores",
        },
        "before": {"model": before["model"], **_figures(before)},
        "after": {"model": after["model"], **_figures(after)},
        "lesion_types": {"before": before["types"], "after": after["types"]},
        "figure": "before_after.png",
    }


def _print_comparison(doc: dict[str, Any]) -> None:
    def cell(v: Any) -> str:
        return "   -" if v is None else f"{v:.3f}"

    held = doc["held_out"]
    b, a = doc["before"], doc["after"]
    print(f"   held-out: {held['images']} clinic scans ({', '.join(held['cameras'])} camera), {held['referable']} "
          "referable; used by neither model's training")
    print(f"   {'':<46s}{'shipped':>10s}{'fine-tuned':>12s}")
    rows = (("AUC (referable DR)", "auc"), ("accuracy", "accuracy"),
            (f"top evidence in a lesion of its type ({b['referable_scans']} ref.)",
             "top_evidence_in_own_lesion_type"),
            ("top evidence in any lesion", "top_evidence_in_any_lesion"))
    for label, key in rows:
        print(f"   {label:<46s}{cell(b[key]):>10s}{cell(a[key]):>12s}")
    chance = b["own_lesion_type_chance"]
    if chance is not None:
        print(f"   (a random peak lands in a lesion of the filter's type {100 * chance:.0f} % of the time)")


def _before_after_figure(image: Any, before: Any, after: Any, cohort: Path, row: dict[str, str], path: Path) -> None:
    """One PNG: the scan and its top evidence filters as the shipped model (top row) and the fine-tuned one
    (bottom row) explain it, each filter's true lesions of its own type outlined and its peak ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    from napari_icnn.parts import MASK_LESION_KEYS, display_name
    from napari_icnn.render import blend, heat_rgba

    masks = {}
    for part in MASK_LESION_KEYS:
        f = cohort / "masks" / part / f"{row['id']}.png"
        if f.is_file():
            masks[part] = np.asarray(Image.open(f)) > 0
    k = 3
    fig, axes = plt.subplots(2, k + 1, figsize=(4.2 * (k + 1), 9.2), squeeze=False)
    for r_, (label, e) in enumerate((("before: the shipped model", before),
                                     ("after: fine-tuned on the clinic's photographs", after))):
        ax = axes[r_][0]
        ax.imshow(image.pixels)
        for part, m in masks.items():
            if m.any():
                ax.contour(m, levels=[0.5], colors=[np.asarray(_colour(part)) / 255], linewidths=0.7)
        ax.set_title(f"{label}\n{e.predicted_class}, p = {e.probability:.2f}", fontsize=10)
        ax.axis("off")
        shown = e.evidence(k)
        for c in range(k):
            ax = axes[r_][c + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(shown):
                ax.text(0.5, 0.5, "no evidence filter" if c == 0 else "", ha="center", va="center", fontsize=10)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            f = shown[c]
            ax.imshow(blend(image.pixels, heat_rgba(e.map_on_scan(f.id))))
            ax.plot(f.peak_x, f.peak_y, "o", mfc="none", mec="white", ms=13, mew=1.5)
            where = ""
            own = masks.get(f.category or "")
            if own is not None:  # a lesion-type filter: does its peak lie in a true lesion of its type?
                if own.any():
                    ax.contour(own, levels=[0.5], colors=["white"], linewidths=0.6)
                y = min(max(int(round(f.peak_y)), 0), own.shape[0] - 1)
                x = min(max(int(round(f.peak_x)), 0), own.shape[1] - 1)
                if own[y, x]:
                    where = "peak inside one"
                elif own.any():
                    where = f"peak {ndimage.distance_transform_edt(~own)[y, x]:.0f} px from the nearest"
                else:
                    where = "none on this scan"
                where = f"\ntrained for {display_name(f.category)}: {where}"
            ax.set_title(f"{f.name}\ncontribution {f.contribution:+.2f}{where}", fontsize=9)
    legend = ", ".join(f"{display_name(p)} {_COLOUR_NAMES.get(p, '')}".strip() for p in masks)
    fig.suptitle(f"clinic scan {row['id']} (ICDR grade {row['grade']}, "
                 f"{'referable' if row['referable'] == '1' else 'not referable'}): the top evidence before and "
                 "after retraining on the clinic's photographs (research use only)\ntrue lesions outlined: on the "
                 f"scan every type ({legend}); on each filter those of the type it was trained for (white)",
                 fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.87, bottom=0.02, wspace=0.05, hspace=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


_COLOUR_NAMES = {"MA": "purple", "HE": "orange", "EX": "green", "SE": "lilac"}
"""The outline colours of :data:`napari_icnn.render.PART_COLOURS` in words, for the figure's legend."""


def _colour(part: str) -> tuple[int, int, int]:
    from napari_icnn.render import PART_COLOURS

    return PART_COLOURS.get(part, PART_COLOURS[None])


# -- --full: train from scratch ------------------------------------------------------------------------------


def _run_full(args: argparse.Namespace) -> int:
    import numpy as np
    import skimage.data

    from napari_icnn.bundle import load_bundle
    from napari_icnn.config import TrainConfig
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.engine.evaluate import evaluate
    from napari_icnn.engine.train import train
    from napari_icnn.errors import Cancelled
    from napari_icnn.image import FundusImage
    from napari_icnn.progress import TextProgress, drain
    from napari_icnn.recipes import RECIPES

    recipe = RECIPES["quick" if args.quick else "demo"]
    out = Path(args.out)
    _prepare(out, {"mode": "train from scratch", "recipe": recipe.name, "params": asdict(recipe), "seed": args.seed})
    started = time.monotonic()
    contents = _Contents(out, "icnn demo --full: an interpretable CNN trained from scratch on synthetic cohorts, "
                              "evaluated, explaining and batch-processing. Research use only.")
    contents.add(MARKER, "what this demo ran (settings, whether it completed, its time)")
    show = TextProgress()
    s = args.seed

    t = _step("1/5  synthetic cohorts (train, validation, test with DICOM)")
    for name, n, seed, dicom in (("train", recipe.n_train, 1000 * s + 1, False),
                                 ("val", recipe.n_val, 1000 * s + 2, False), ("test", recipe.n_test, 1000 * s + 3, True)):
        summary = drain(generate_cohort(out / "data" / name, n, size=recipe.image_size, seed=seed, dicom=dicom,
                                        workers=2, look=recipe.look), show)
        print("   " + summary.describe())
    contents.add("data/train/, val/, test/", "the synthetic cohorts: images/, masks/, labels.csv; test/ also "
                 "dicom/ (never seen in training)")
    _took(t)

    t = _step("2/5  training an interpretable CNN (ICNN, VGG-style backbone)")
    common = dict(data=str(out / "data" / "train"), val=str(out / "data" / "val"), size=recipe.size,
                  device=args.device, seed=s, **recipe.train)
    print("   an ordinary CNN first ...")
    first = train(TrainConfig(out=str(out / "ordinary"), ordinary=True, epochs=recipe.epochs,
                              warmup_epochs=recipe.warmup, categories="decision", **common), on_event=show)
    if first.stopped:
        raise Cancelled(f"training the ordinary CNN was interrupted after {first.epochs_done} of {recipe.epochs} "
                        f"epochs; the outputs so far are in {out} ({CONTENTS} lists them)")
    contents.add("ordinary/", "the ordinary CNN (a MONAI bundle) the interpretable one starts from")
    print("   ... then the interpretable fine-tuning that starts from it")
    result = train(TrainConfig(out=str(out / "model"), init=str(out / "ordinary"), epochs=recipe.finetune_epochs,
                               warmup_epochs=0, lr=recipe.finetune_lr,
                               **{**common, "size": recipe.types_size or recipe.size, **recipe.icnn}), on_event=show)
    if result.stopped:
        raise Cancelled(f"the interpretable fine-tuning was interrupted after {result.epochs_done} of "
                        f"{recipe.finetune_epochs} epochs; the outputs so far are in {out} ({CONTENTS} lists them)")
    train_s = time.monotonic() - t
    print(f"   trained in {train_s:.0f} s (best epoch {result.best_epoch})")
    contents.add("model/", "the interpretable CNN (a MONAI bundle; open it in the Explain widget or pass --model)")

    t = _step("3/5  evaluation on the unseen test cohort")
    metrics = evaluate(str(out / "model"), str(out / "data" / "test"), on_event=show, out=str(out / "metrics.json"))
    for key in ("auc", "accuracy", "part_interpretability", "location_instability", "pointing_hit_rate"):
        value = metrics.get(key)
        print(f"   {key:<24s} {value:.3f}" if isinstance(value, float) else f"   {key:<24s} {value}")
    contents.add("metrics.json", "the model's classification and interpretability figures on the test cohort")
    _took(t)

    t = _step("4/5  explaining a synthetic scan and the real photograph")
    from napari_icnn.data.image_io import load_image

    model = load_bundle(out / "model", device=args.device)
    test_images = sorted((out / "data" / "test" / "images").glob("*.png"))
    scan = load_image(test_images[0])[0]
    real = FundusImage(pixels=np.ascontiguousarray(skimage.data.retina()), source="skimage.data.retina()",
                       laterality="L")
    _explain_and_write(scan, _explain(scan, model), out / "explain_synthetic", f"test scan {test_images[0].stem}")
    _explain_and_write(real, _explain(real, model), out / "explain_real_photograph",
                       "scikit-image's real photograph (a healthy left eye)")
    contents.add("explain_synthetic/, explain_real_photograph/", "the model's explanations: summary.png, one PNG "
                 "overlay per reported filter, explanation.json")
    _took(t)

    t = _step("5/5  DICOM batch inference over the test cohort")
    _batch(out / "data" / "test" / "dicom", out / "batch", str(out / "model"), args.device, show)
    contents.add("batch/", "the batch job's results: summary.csv, per scan a DICOM SEG, a DICOM SR, an evidence "
                 "sheet PNG and a JSON")
    _took(t)

    total = _finish(out, started, training_seconds=round(train_s, 1))
    print(f"\nDone in {total / 60:.1f} min (training {train_s / 60:.1f} min). Outputs in {out}/ (also listed in "
          f"{out / CONTENTS}):")
    contents.print()
    print(f"Open it in napari:  napari {test_images[0]}  then Plugins > Interpretable fundus CNN > Explain, model "
          f"folder {out / 'model'}")
    if args.napari:
        _open_napari(test_images[0], out / "model")
    return 0


def _open_napari(image: Path, model: Path) -> None:  # pragma: no cover - interactive
    import napari

    viewer = napari.Viewer()
    viewer.open(str(image))
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-icnn", "Explain")
        if hasattr(widget, "set_model_path"):
            widget.set_model_path(str(model))
    except Exception as err:  # noqa: BLE001 - the demo still shows the scan
        print(f"could not open the Explain widget: {err}", file=sys.stderr)
    napari.run()
