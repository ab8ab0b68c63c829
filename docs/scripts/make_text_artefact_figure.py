"""Make ``docs/figures/text_artefact_flags.png``: the batch evidence sheet of a healthy synthetic eye (realistic
look, a 4:3 sensor's clipped field, a timestamp burned into its bottom-left corner) explained by a model trained
on clean photographs only, whose haemorrhage and exudate filters fire on the timestamp and are listed as possible
artefacts, never as evidence. The figure in docs/ was made with the demo model shipped before the realistic look
(``git show e6201fb:napari_icnn/models/demo/...``, restored into a folder and given with ``--model``).

Run from the repository root: ``python docs/scripts/make_text_artefact_figure.py [--model DIR] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "figures" / "text_artefact_flags.png"
SEED, INDEX = 7070, 35
"""Image 35 of the realistic cohort of seed 7070 (``icnn synth OUT --n 80 --seed 7070``): grade 0, two
burned-in text items."""


def main(argv: list[str] | None = None) -> Path:
    """Generate the photograph, run ``icnn infer --formats png`` on it and copy its evidence sheet to ``--out``."""
    from napari_icnn.cli import main as icnn
    from napari_icnn.data.synth import generate_fundus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT})")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped model)")
    args = parser.parse_args(argv)
    f = generate_fundus(np.random.SeedSequence([SEED, INDEX]), None, look="realistic")
    assert f.labels["grade"] == 0 and f.labels["n_text"] > 0, f.labels
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in" / f"{f.labels['id']}.png"
        src.parent.mkdir()
        Image.fromarray(f.image).save(src)
        model = ["--model", str(args.model)] if args.model else []
        code = icnn(["infer", str(src.parent), "--out", str(Path(tmp) / "out"), "--formats", "png", *model])
        assert code == 0, code
        (sheet,) = (Path(tmp) / "out").rglob("images/*.png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sheet, args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
