"""Batch inference over folders of DICOM and image files (``icnn infer``).

>>> from napari_icnn.batch import BatchConfig, infer
>>> summary = infer(BatchConfig(inputs=("exports/",), out="results"))  # doctest: +SKIP
>>> summary.exit_code  # doctest: +SKIP
0

Every input file (every frame of a multi-frame file) gets a row in ``results/summary.csv``:
``ok`` with its outputs (DICOM SEG + SR for DICOM inputs, a PNG evidence sheet and a prediction
JSON), ``error`` (unreadable or broken) or ``declined`` (readable, but not a colour fundus
photograph, or one the image-quality gate withholds the verdict on: ungradeable unless
``keep_ungradeable``, or outside the model's experience with ``decline_unfamiliar``), with its image
quality and experience score. A bad file never stops the run; a second run into the same folder skips the files
already recorded. Worker processes decode while the network runs (``workers``); a Dask scheduler
address runs the same batch on a cluster (``scheduler``). :func:`preflight` refuses a set-up that
cannot start, for ``icnn infer`` and the Batch widget alike.
"""

from napari_icnn.batch.config import FORMATS, BatchConfig, BatchCounts, BatchSummary
from napari_icnn.batch.preflight import preflight, problems
from napari_icnn.batch.run import Stopped, infer, infer_iter, infer_until_stopped
from napari_icnn.batch.summary import COLUMNS

__all__ = [
    "BatchConfig",
    "BatchCounts",
    "BatchSummary",
    "Stopped",
    "infer_iter",
    "infer",
    "infer_until_stopped",
    "preflight",
    "problems",
    "FORMATS",
    "COLUMNS",
]
