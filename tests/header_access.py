"""Which DICOM header attributes a run reads: a recorder around pydicom's data sets.

Every way code reads an attribute of a pydicom ``Dataset`` (``ds.Keyword``, ``ds.get``, ``in``,
``ds[tag]``) funnels through ``__getattr__``, ``__contains__`` or ``__getitem__``; the recorder wraps
those three for the data sets ``pydicom.dcmread`` returns for files under one folder (and their file
meta information), so what the writers copy or read from a source header is listed, whatever the
code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["recording_header_access"]


@contextlib.contextmanager
def recording_header_access(folder: str | os.PathLike[str]) -> Iterator[set[str]]:
    """Within the block, the keywords read from headers of files under ``folder`` collect in the
    yielded set (single process only: worker processes are not seen)."""
    import pydicom
    from pydicom.datadict import keyword_for_tag
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    root = os.path.realpath(os.fspath(folder))
    tracked: set[int] = set()
    alive: list[object] = []  # tracked data sets stay alive, so their ids are never reused
    seen: set[str] = set()
    real_read = pydicom.dcmread
    real_getattr, real_contains, real_getitem = Dataset.__getattr__, Dataset.__contains__, Dataset.__getitem__

    def note(key: object) -> None:
        if isinstance(key, str):
            seen.add(key)
            return
        with contextlib.suppress(Exception):
            kw = keyword_for_tag(Tag(key))
            seen.add(kw or str(Tag(key)))

    def dcmread(fp, *args, **kwargs):
        ds = real_read(fp, *args, **kwargs)
        name = getattr(fp, "name", fp)
        if isinstance(name, str | os.PathLike) and os.path.realpath(os.fspath(name)).startswith(root + os.sep):
            meta = getattr(ds, "file_meta", None)
            for d in (ds, meta) if meta is not None else (ds,):
                tracked.add(id(d))
                alive.append(d)
        return ds

    def getattr_(self, name):
        if id(self) in tracked and name[:1].isupper():
            note(name)
        return real_getattr(self, name)

    def contains(self, key):
        if id(self) in tracked:
            note(key)
        return real_contains(self, key)

    def getitem(self, key):
        if id(self) in tracked and not isinstance(key, slice):
            note(key)
        return real_getitem(self, key)

    pydicom.dcmread = dcmread
    Dataset.__getattr__, Dataset.__contains__, Dataset.__getitem__ = getattr_, contains, getitem
    try:
        yield seen
    finally:
        pydicom.dcmread = real_read
        Dataset.__getattr__, Dataset.__contains__, Dataset.__getitem__ = real_getattr, real_contains, real_getitem
