"""PACS integration for the batch job: pull fundus studies, push the evidence back.

>>> from napari_icnn.batch import BatchConfig
>>> from napari_icnn.pacs import PacsJob, Query, load_settings, pacs_infer, parse_pacs_url
>>> pacs = parse_pacs_url("dicomweb+https://pacs.example.org:443/dicom-web")
>>> job = PacsJob(source=pacs, query=Query(since="20250101"), store_to=pacs, settings=load_settings())
>>> summary = pacs_infer(job, BatchConfig(inputs=(str(pacs),), out="results"))  # doctest: +SKIP

The instances a :class:`Query` finds (QIDO-RS or C-FIND) are retrieved (WADO-RS or C-GET) into
``results/pacs-staging`` a few ahead of the batch job, which processes them as they arrive; each
SEG and SR result is stored (STOW-RS or C-STORE) as soon as it is written, unless the PACS holds
it already. ``results/pacs_state.json`` and the batch job's ``summary.csv`` make a re-run resume.
"""

from napari_icnn.pacs.credentials import Credentials, PacsSettings, load_settings
from napari_icnn.pacs.errors import PacsDenied, PacsError, PacsRefused, PacsSetupError, PacsUnavailable
from napari_icnn.pacs.remote import InstanceRef, Remote, SeriesRef, connect
from napari_icnn.pacs.retry import RetryPolicy
from napari_icnn.pacs.run import STAGING_NAME, PacsJob, PacsSummary, pacs_infer, pacs_infer_iter
from napari_icnn.pacs.source import Query
from napari_icnn.pacs.store import STATE_NAME
from napari_icnn.pacs.urls import PacsUrl, parse_pacs_url

__all__ = [
    "PacsUrl",
    "parse_pacs_url",
    "Credentials",
    "PacsSettings",
    "load_settings",
    "RetryPolicy",
    "Query",
    "PacsJob",
    "PacsSummary",
    "pacs_infer_iter",
    "pacs_infer",
    "connect",
    "Remote",
    "InstanceRef",
    "SeriesRef",
    "PacsError",
    "PacsUnavailable",
    "PacsRefused",
    "PacsDenied",
    "PacsSetupError",
    "STATE_NAME",
    "STAGING_NAME",
]
