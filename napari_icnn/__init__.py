"""napari-icnn: interpretable CNNs for retinal fundus photographs.

The package imports nothing heavy at top level (no torch, MONAI or napari), so that napari
starts fast and the command line answers ``--help`` at once.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
