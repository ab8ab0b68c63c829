"""Data: fundus images in memory, DICOM and image-file reading, data-set layouts,
the synthetic fundus generator and the MONAI preprocessing transforms."""

from napari_icnn.image import FundusImage

__all__ = ["FundusImage"]
