"""Build the model shipped in ``napari_icnn/models/demo`` (``make demo-bundle``, about 50 minutes on a 2-core CPU).

The ``demo`` recipe of :data:`napari_icnn.recipes.RECIPES` (the one ``icnn demo --full`` trains), on its own cohorts:
realistic synthetic photographs from seeds 31 (training) and 32 (validation; seed 33 was its test cohort in
docs/results.md); the tests use other seeds. An ordinary CNN for the referable decision alone at the recipe's
``size``, then the interpretable fine-tuning that starts from it with TrainConfig's defaults at the recipe's
``types_size`` (lesion-type filters on the 4-px map, a quarter of them label-free, each pulled into lesions of its
type by the cohorts' lesion masks, centre target): 18 and 31 minutes here.
``python -m training.demo_bundle [--work DIR] [--reuse-ordinary]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

TRAIN_SEED, VAL_SEED, MODEL_SEED = 31, 32, 0
SHIPPED = Path(__file__).resolve().parents[1] / "napari_icnn" / "models" / "demo"
PATH_SETTINGS = frozenset({"out", "data", "val", "init"})


def finished_as(out: Path, settings: dict[str, Any]) -> str | None:
    """Why the training run in ``out`` cannot stand for a run of ``settings`` (None: it can, it finished them)."""
    from napari_icnn.bundle import METADATA, WEIGHTS
    from napari_icnn.engine.run_folder import RunFolder

    run = RunFolder(out)
    if not ((out / WEIGHTS).is_file() and (out / METADATA).is_file()):
        return f"{out} holds no finished model"
    saved = run.saved_config()
    differ = sorted(k for k, v in settings.items() if not _same(k, saved.get(k), v))
    if differ:
        return f"{out} was trained with other settings ({', '.join(differ)})"
    if len(run.history()) != settings["epochs"]:
        return f"{out} did not complete its {settings['epochs']} epoch(s)"
    return None


def _same(key: str, saved: Any, wanted: Any) -> bool:
    """Whether a recorded setting is the wanted one (folders compared as the folders they name, however spelled)."""
    if key in PATH_SETTINGS and isinstance(saved, str) and isinstance(wanted, str):
        return Path(saved).resolve() == Path(wanted).resolve()
    return bool(saved == wanted)


def cohort_as(root: Path, n: int, size: int, seed: int, look: str) -> str | None:
    """Why ``root`` is not the finished synthetic cohort of these settings (None: it is)."""
    import json

    try:
        meta = json.loads((root / "cohort.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{root} holds no cohort"
    want = {"n": n, "size": size, "seed": seed, "look": look, "complete": True}
    differ = sorted(k for k, v in want.items() if meta.get(k) != v)
    return f"{root} is another cohort ({', '.join(differ)})" if differ else None


def main(argv: list[str] | None = None) -> int:
    """Generate the cohorts, train both stages in ``--work`` and replace the shipped model by the result; 0 (1: stopped,
    2: ``--reuse-ordinary`` refused, nothing deleted)."""
    from napari_icnn.config import TrainConfig
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.engine.train import train
    from napari_icnn.progress import TextProgress, drain
    from napari_icnn.recipes import RECIPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/demo-bundle"), help="working folder (replaced)")
    ap.add_argument("--reuse-ordinary", action="store_true",
                    help="keep the cohorts and the ordinary CNN that --work already holds, when they were built with "
                         "this recipe's settings (the interpretable stage alone is trained again); otherwise stop "
                         "and say why, deleting nothing")
    args = ap.parse_args(argv)
    r = RECIPES["demo"]
    show = TextProgress()
    common = dict(data=str(args.work / "train"), val=str(args.work / "val"), seed=MODEL_SEED, **r.train)
    ordinary = dict(out=str(args.work / "ordinary"), ordinary=True, epochs=r.epochs, warmup_epochs=r.warmup,
                    categories="decision", size=r.size, **common)
    cohorts = (("train", r.n_train, TRAIN_SEED), ("val", r.n_val, VAL_SEED))
    why_not: str | None = "not asked to reuse it"
    if args.reuse_ordinary:
        why_not = next((w for name, n, seed in cohorts
                        if (w := cohort_as(args.work / name, n, r.image_size, seed, r.look))), None)
        why_not = why_not or finished_as(args.work / "ordinary", ordinary)
    if args.reuse_ordinary and why_not is not None:
        # nothing is deleted: the folder may hold other work
        print(f"cannot reuse the ordinary CNN: {why_not}; run without --reuse-ordinary to build everything again "
              f"(that replaces {args.work})", file=sys.stderr)
        return 2
    if why_not is None:
        print(f"reusing the ordinary CNN and cohorts in {args.work}")
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        for name, n, seed in cohorts:
            drain(generate_cohort(args.work / name, n, size=r.image_size, seed=seed, look=r.look), show)
        if train(TrainConfig(**ordinary), on_event=show).stopped:
            print("stopped: the ordinary CNN is incomplete; the shipped model is unchanged", file=sys.stderr)
            return 1
    shutil.rmtree(args.work / "icnn", ignore_errors=True)
    result = train(TrainConfig(out=str(args.work / "icnn"), init=str(args.work / "ordinary"),
                               epochs=r.finetune_epochs, warmup_epochs=0, lr=r.finetune_lr, categories="lesion-types",
                               **{**common, "size": r.types_size or r.size, **r.icnn}), on_event=show)
    if result.stopped:
        print(f"stopped: the interpretable stage is incomplete ({args.work / 'icnn'}); the shipped model is unchanged",
              file=sys.stderr)
        return 1
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(args.work / "icnn", SHIPPED, ignore=shutil.ignore_patterns("checkpoints"))
    print(f"shipped model replaced: {SHIPPED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
