"""Procedural synthetic fundus photographs with exact part masks and rule-derived ICDR grades.

Two looks: ``clean`` (square, artefact-free; the default of :func:`generate_fundus`) and
``realistic`` (varied cameras, burned-in text and artefacts; the default of
:func:`generate_cohort` and ``icnn synth``).

>>> from napari_icnn.data.synth import generate_fundus
>>> f = generate_fundus(3, size=128, grade=0)
>>> f.image.shape, f.labels["grade"], bool(f.masks["optic_disc"].any())
((128, 128, 3), 0, True)
"""

from napari_icnn.data.synth.camera import CAMERA_NAMES, FOV_SHAPES, PROFILES, SIZE_RANGE
from napari_icnn.data.synth.cohort import (
    COHORT_FORMAT,
    DICOM_COLUMNS,
    GENERATOR_VERSION,
    MASK_FOLDERS,
    CohortSummary,
    generate_cohort,
    is_cohort,
    write_cohort,
)
from napari_icnn.data.synth.fundus import (
    ARTEFACT_KEYS,
    CAMERA_COLUMNS,
    EXTRA_COLUMNS,
    GRADE_MIX,
    LABEL_COLUMNS,
    LOOKS,
    SynthFundus,
    generate_fundus,
    image_id,
)
from napari_icnn.data.synth.grading import RULES, icdr_grade, is_referable

__all__ = [
    "SynthFundus",
    "generate_fundus",
    "CohortSummary",
    "generate_cohort",
    "write_cohort",
    "is_cohort",
    "GENERATOR_VERSION",
    "COHORT_FORMAT",
    "DICOM_COLUMNS",
    "image_id",
    "GRADE_MIX",
    "LABEL_COLUMNS",
    "EXTRA_COLUMNS",
    "CAMERA_COLUMNS",
    "ARTEFACT_KEYS",
    "MASK_FOLDERS",
    "LOOKS",
    "PROFILES",
    "CAMERA_NAMES",
    "FOV_SHAPES",
    "SIZE_RANGE",
    "RULES",
    "icdr_grade",
    "is_referable",
]
