"""Atomic file writes (temporary name in the same folder, fsync, rename): a crash never leaves half a file.

Also what a full disk looks like (:data:`DISK_FULL_ERRNOS`, :class:`DiskFull`): the writers here
remove their temporary file and let the ``OSError`` through; callers that run many writes turn it
into :class:`DiskFull` and stop, since every further write would fail the same way.

Free of torch and NumPy imports, so light worker processes can use it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from napari_icnn.errors import IcnnError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "DISK_FULL_ERRNOS", "DiskFull", "disk_full_in",
           "disk_full_errno"]

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""No space left, quota exceeded, file size limit reached: no later write into the folder can succeed."""

_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file size limit",
}


class DiskFull(IcnnError):
    """Writing into ``folder`` failed for want of space: the run stops, as every write after it
    would fail too; what was finished stays valid and a run with space resumes from it.

    Parameters
    ----------
    folder
        The folder being written into.
    errno
        ``ENOSPC``, ``EDQUOT`` or ``EFBIG``.
    """

    def __init__(self, folder: str | os.PathLike[str], errno: int):
        self.folder = os.fspath(folder)
        self.errno = errno
        super().__init__(self.folder, errno)  # the arguments, so that it crosses process boundaries

    def __str__(self) -> str:
        why = _WHY.get(self.errno, os.strerror(self.errno))
        return (f"{self.folder}: disk full ({why}); the run stopped, finished files keep their results: "
                "free space and run the same command again to resume")


def disk_full_errno(exc: BaseException | None) -> int | None:
    """The errno of a full disk when ``exc`` is one, or was raised from or while handling one.

    Writers wrap the error: pydicom re-raises a failed write as an ``OSError`` with the tag in its
    message and no errno, chained to the original.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return exc.errno
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def disk_full_in(folder: str | os.PathLike[str]):
    """Within the block, an ``OSError`` of a full disk (however wrapped) becomes :class:`DiskFull` naming
    ``folder``; any other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        raise DiskFull(Path(folder).expanduser().absolute(), code) from exc


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], durable: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it into place.

    The temporary is created with mode 0o666 less the umask, as any other output, and, when
    ``durable``, synced before the rename so that a power failure cannot leave an empty file under
    the final name (``durable=False``: data that can be generated again, written by the thousand).

    Raises
    ------
    OSError
        As the file system raises it (a full disk included); ``path`` is then as it was and the
        temporary file is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
