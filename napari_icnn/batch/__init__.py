"""Batch inference over folders of DICOM and image files (``icnn infer``).

>>> from napari_icnn.batch import BatchConfig, infer
>>> summary = infer(BatchConfig(inputs=("exports/",), out="results"))  # doctest: +SKIP
>>> summary.exit_code  # doctest: +SKIP
0

Every input file (every frame of a multi-frame file) gets a row in ``results/summary.csv``:
``ok`` with its outputs (DICOM SEG + SR for DICOM inputs, a PNG evidence sheet and a prediction
JSON), ``error`` (unreadable or broken) or ``declined`` (readable, but not a colour fundus
photograph). A bad file never stops the run; a second run into the same folder skips the files
already recorded. Worker processes decode while the network runs (``workers``); a Dask scheduler
address runs the same batch on a cluster (``scheduler``).
"""

from napari_icnn.batch.config import FORMATS, BatchConfig, BatchSummary
from napari_icnn.batch.run import infer, infer_iter
from napari_icnn.batch.summary import COLUMNS

__all__ = ["BatchConfig", "BatchSummary", "infer_iter", "infer", "FORMATS", "COLUMNS"]
