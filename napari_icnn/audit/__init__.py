"""The shortcut audit: where a model's evidence lies on a cohort (:mod:`.measure`) and its written form, tables
and figures (:mod:`.report`)."""

from napari_icnn.audit.measure import (
    FORMAT_VERSION,
    NON_EYE,
    PLACES,
    SHORTCUT_EXCESS,
    AuditResult,
    Finding,
    audit_iter,
    on_place,
    place_name,
)
from napari_icnn.audit.report import read_audit, write_audit

__all__ = ["FORMAT_VERSION", "NON_EYE", "PLACES", "SHORTCUT_EXCESS", "AuditResult", "Finding", "audit_iter",
           "on_place", "place_name", "read_audit", "write_audit"]
