"""Fetching one study from a DICOMweb address, for opening it in a viewer.

``dicomweb+http(s)://HOST:PORT/PATH/studies/<Study Instance UID>`` names a study; its fundus
photographs are retrieved into a private folder (``0700``) and their paths returned, to be read
like local files. The files hold patient data: the caller deletes the folder when done.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from napari_icnn.errors import ConfigError
from napari_icnn.pacs.credentials import PacsSettings, load_settings
from napari_icnn.pacs.remote import connect, is_uid
from napari_icnn.pacs.source import Query, find_instances, modality_codes, staged_path
from napari_icnn.pacs.urls import PacsUrl, parse_pacs_url
from napari_icnn.progress import drain

__all__ = ["is_study_address", "parse_study_address", "fetch_study"]

_MARK = "/studies/"


def is_study_address(path: object) -> bool:
    """Whether ``path`` is a DICOMweb study address (cheap: no request is made)."""
    # A str only: a Path would have folded the "//" of the address already.
    return isinstance(path, str) and path.startswith(("dicomweb+http://", "dicomweb+https://")) and _MARK in path


def parse_study_address(text: str) -> tuple[PacsUrl, str]:
    """The DICOMweb root and the Study Instance UID of a study address.

    Raises
    ------
    ConfigError
        Not of the form ``dicomweb+http(s)://HOST:PORT/PATH/studies/UID``.
    """
    root, sep, uid = str(text).rstrip("/").rpartition(_MARK)
    if not sep or not is_uid(uid):
        raise ConfigError(f"{text}: not a study address (dicomweb+http(s)://HOST:PORT/PATH/studies/UID)")
    return parse_pacs_url(root, "study address"), uid


def fetch_study(
    address: str,
    folder: str | os.PathLike[str] | None = None,
    settings: PacsSettings | None = None,
    modalities: Sequence[str] | str | None = ("OP",),
) -> list[Path]:
    """Retrieve the photographs of the study at ``address``; their file paths, in PACS order.

    ``folder``: where they go (a new private temporary folder when ``None``); ``settings``:
    credentials and retries (from the environment when ``None``); ``modalities``: series to
    take (``None``: all).

    Raises
    ------
    ConfigError
        A malformed address; a PACS that cannot be reached, refuses us or lacks the study
        (:class:`~napari_icnn.pacs.errors.PacsSetupError`).
    PacsError
        An instance could not be retrieved.
    """
    url, study = parse_study_address(address)
    settings = settings if settings is not None else load_settings()
    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="icnn-study-"))
    remote = connect(url, settings)
    try:
        listing = drain(find_instances(remote, Query(studies=(study,), modalities=modality_codes(modalities)), settings.retry))
        paths = []
        for ref in listing.instances:
            path = staged_path(target, ref)
            path.parent.mkdir(parents=True, exist_ok=True)
            settings.retry.call(partial(remote.retrieve, ref, path))
            paths.append(path)
        return paths
    finally:
        remote.close()
