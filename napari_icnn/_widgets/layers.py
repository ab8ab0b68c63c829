"""The evidence layers' data as the widgets name them: :mod:`napari_icnn.layer_data`.

The layer data are made and read in the core, so that the evidence writers and the tests need no
widget module; this module keeps the widgets' name for them.
"""

from __future__ import annotations

from napari_icnn import layer_data as _layer_data
from napari_icnn.layer_data import *  # noqa: F403

__all__ = list(_layer_data.__all__)
