"""The interpretability study: ICNN vs ordinary CNN vs Grad-CAM / occlusion on synthetic fundus cohorts.

Run it from the root of the source checkout with
``python -m training.experiments --out DIR [--seed S] [--preset cpu|gpu]``; ``docs/results.md`` is written from
its outputs (``DIR/results.json``, ``DIR/results.md``, ``DIR/figures/``).
"""

from training.experiments.driver import experiment_iter, run_experiment
from training.experiments.presets import PRESETS, Preset

__all__ = ["PRESETS", "Preset", "experiment_iter", "run_experiment"]
