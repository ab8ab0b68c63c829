"""Finding the input files of a batch: named files, and every file under named folders.

The walk is a generator (one folder's listing in memory at a time), in a stable order (names
sorted within each folder), never enters the output folder, follows folder links once (a link
back up the tree is not followed again) and passes over hidden entries (names starting with
``.``). What a file holds is judged later, by content: every file found gets a summary row, and
so does a folder that cannot be listed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

__all__ = ["iter_input_files"]


def iter_input_files(inputs: Sequence[str], exclude: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Absolute paths of the input files, each once, in a stable order.

    Parameters
    ----------
    inputs
        Files and folders; folders are searched recursively.
    exclude
        A folder never entered (the output folder, which may lie inside an input folder).
    """
    skip = os.path.realpath(exclude) if exclude is not None else None
    folders = [os.path.realpath(i) for i in inputs if os.path.isdir(i)]
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for item in inputs:
        path = os.path.abspath(item)
        if os.path.isdir(path):
            yield from _walk(path, skip, seen_dirs)
        elif os.path.lexists(path):
            real = os.path.realpath(path)
            # Named files may repeat, or lie in a named folder whose walk yields them anyway.
            if path in seen_files or _inside(real, skip) or any(_walked(real, f) for f in folders):
                continue
            seen_files.add(path)
            yield path


def _walked(real: str, folder: str) -> bool:
    """Whether the walk of ``folder`` reaches the file ``real`` (it passes over hidden names)."""
    if not _inside(real, folder):
        return False
    return not any(part.startswith(".") for part in os.path.relpath(real, folder).split(os.sep))


def _inside(real: str, folder: str | None) -> bool:
    return folder is not None and (real == folder or real.startswith(folder.rstrip(os.sep) + os.sep))


def _walk(folder: str, skip: str | None, seen: set[tuple[int, int]]) -> Iterator[str]:
    real = os.path.realpath(folder)
    if _inside(real, skip):
        return
    try:
        st = os.stat(folder)
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return
    seen.add(key)
    try:
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.path) for e in it if not e.name.startswith("."))
    except OSError:
        # Reported as an input of its own (its files cannot be accounted for one by one).
        yield folder
        return
    for _name, path in entries:
        if os.path.isdir(path):
            yield from _walk(path, skip, seen)
        else:
            yield path  # broken links too: they get a row saying so
