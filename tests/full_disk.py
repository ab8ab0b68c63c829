"""A folder whose disk fills up on cue, for the tests of a batch that runs out of space.

The ``full_disk`` fixture uses the most real of three ways this machine allows, found out when the
test runs rather than assumed:

1. ``tmpfs``: a small tmpfs mounted on the folder (root with ``CAP_SYS_ADMIN``). :meth:`FullDisk.fill`
   writes a filler file until only a few kilobytes are left, and keeps topping it up (the run
   deletes files as it goes: processed PACS instances), so every write after it fails with
   ``ENOSPC`` as on a real full disk; :meth:`FullDisk.free` deletes the filler.
2. ``rlimit``: ``RLIMIT_FSIZE`` lowered, mid-run, to just above the size of ``summary.csv`` for the
   process writing the batch (and its worker processes, with ``prlimit``): every larger write then
   fails with ``EFBIG`` (``SIGXFSZ`` ignored, as Python does at start-up).
3. ``inject``: ``os.write`` and ``os.fdopen``, the lowest level of the batch's writes (summary,
   atomic writes, DICOM results), wrapped so that writes into the folder fail with ``ENOSPC`` once
   a byte budget is spent. In-process only: runs use ``--workers 0``.

``ICNN_TEST_FULL_DISK=tmpfs|rlimit|inject`` forces one (to check each works on a machine that has
the first).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

__all__ = ["FullDisk", "full_disk", "METHODS"]

METHODS = ("tmpfs", "rlimit", "inject")
_SLACK = 24 * 1024
"""Bytes left free by :meth:`FullDisk.fill` on a tmpfs: a write or two may still fit, then not."""


def _try_mount(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``folder``; ``None`` when done, else why not."""
    exe = shutil.which("mount")
    if exe is None:
        return "no mount command"
    try:
        proc = subprocess.run([exe, "-t", "tmpfs", "-o", f"size={size},mode=0755", "icnn-test-disk", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount failed to run ({exc})"
    if proc.returncode != 0:
        return f"mount refused: {(proc.stderr or proc.stdout).strip()}"
    if not os.path.ismount(folder):
        return "mount reported success but the folder is no mount point"
    return None


class FullDisk:
    """A folder (``root``) on a disk that :meth:`fill` fills and :meth:`free` empties again."""

    def __init__(self, method: str, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
        self.method = method
        self.root = root
        self._monkeypatch = monkeypatch
        self._capsys = capsys
        self._filler = root / ".filler"
        self._pids: Callable[[], list[int]] | None = None
        """The processes a run writes from; ``None``: this one."""
        self._budget: int | None = None
        self._lock = threading.Lock()
        self._hog: threading.Thread | None = None
        self._hog_stop = threading.Event()
        self.filled = False
        if method == "inject":
            self._inject()

    @property
    def in_process(self) -> bool:
        """Runs must stay in this process (and use ``--workers 0``) for the disk to fill."""
        return self.method == "inject"

    # ------------------------------------------------------------------ filling and freeing

    def fill(self, slack: int = _SLACK) -> None:
        """From now on, writes into ``root`` fail for want of space (after ``slack`` more bytes,
        give or take a page; the ``rlimit`` way has none)."""
        if self.method == "tmpfs":
            fh = open(self._filler, "wb", buffering=0)
            self._top_up(fh, slack)
            # Space the run frees (a processed instance it deletes) is taken again at once, as a
            # disk filled by something else stays full: else a run can finish on what it freed.
            self._hog_stop = threading.Event()
            self._hog = threading.Thread(target=self._keep_full, args=(fh, slack), daemon=True)
            self._hog.start()
        elif self.method == "rlimit":
            summary = self.root / "out" / "summary.csv"
            limit = (summary.stat().st_size if summary.exists() else 0) + 200
            for pid in self._pids() if self._pids is not None else [os.getpid()]:
                with contextlib.suppress(ProcessLookupError):
                    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
        else:
            with self._lock:
                self._budget = slack
        self.filled = True

    def free(self) -> None:
        """Space again (a run started after this has all it needs)."""
        if self.method == "tmpfs":
            if self._hog is not None:
                self._hog_stop.set()
                self._hog.join()
                self._hog = None
            self._filler.unlink(missing_ok=True)
        elif self.method == "inject":
            with self._lock:
                self._budget = None
        self.filled = False

    def _top_up(self, fh, slack: int) -> None:
        """Write to the filler until ``slack`` bytes are left free."""
        st = os.statvfs(self.root)
        left = st.f_bavail * st.f_frsize - slack
        chunk = b"\0" * (1 << 20)
        while left > 0:
            n = min(left, len(chunk))
            try:
                written = fh.write(chunk[:n])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return
            if not written:
                return
            left -= written

    def _keep_full(self, fh, slack: int) -> None:
        with fh:
            while not self._hog_stop.wait(0.002):
                self._top_up(fh, slack)

    # ------------------------------------------------------------------ running the batch

    def run_cli(self, args: Sequence[str], fill_when: Callable[[], bool] | None = None,
                timeout: float = 240) -> types.SimpleNamespace:
        """``icnn ARGS`` (a real process unless :attr:`in_process`); :meth:`fill` as soon as
        ``fill_when()`` is true. Returns ``returncode``, ``stdout``, ``stderr``."""
        if self.in_process:
            return self._run_here(args, fill_when)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.Popen([sys.executable, "-m", "napari_icnn", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_ignore_sigxfsz)
        self._pids = lambda: _tree(proc.pid)
        out: dict[str, str] = {}
        reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while fill_when is not None and proc.poll() is None and time.monotonic() < deadline:
                if fill_when():
                    self.fill()
                    break
                time.sleep(0.01)
            reader.join(max(0.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                reader.join()
                pytest.fail(f"icnn {' '.join(args)} did not finish within {timeout} s")
        self._pids = None
        return types.SimpleNamespace(returncode=proc.returncode, **out)

    def _run_here(self, args: Sequence[str], fill_when: Callable[[], bool] | None) -> types.SimpleNamespace:
        from napari_icnn.cli import main

        stop = threading.Event()

        def watch() -> None:
            while fill_when is not None and not stop.is_set():
                if fill_when():
                    self.fill()
                    return
                time.sleep(0.01)

        self._capsys.readouterr()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            code = main(list(args))
        finally:
            stop.set()
            watcher.join()
        captured = self._capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    # ------------------------------------------------------------------ the injected full disk

    def _inject(self) -> None:
        root = str(self.root) + os.sep
        real_write, real_fdopen = os.write, os.fdopen
        disk = self

        def under_root(fd: int) -> bool:
            try:
                return os.readlink(f"/proc/self/fd/{fd}").startswith(root)
            except OSError:
                return False

        def allowed(fd: int, n: int) -> int:
            with disk._lock:
                if disk._budget is None or not under_root(fd):
                    return n
                if disk._budget <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                k = min(n, disk._budget)
                disk._budget -= k
                return k

        class Raw(io.FileIO):
            def write(self, b):  # type: ignore[override]
                view = memoryview(b).cast("B")
                return super().write(view[: allowed(self.fileno(), len(view))])

        def write(fd: int, data) -> int:
            view = memoryview(data).cast("B")
            return real_write(fd, view[: allowed(fd, len(view))])

        def fdopen(fd: int, mode: str = "r", *a, **kw):
            if ("w" in mode or "a" in mode) and "b" in mode and under_root(fd):
                return io.BufferedWriter(Raw(fd, mode.replace("b", "").replace("+", "") or "w", closefd=True))
            return real_fdopen(fd, mode, *a, **kw)

        self._monkeypatch.setattr(os, "write", write)
        self._monkeypatch.setattr(os, "fdopen", fdopen)


def _ignore_sigxfsz() -> None:  # pragma: no cover - runs in the child before exec
    # A write past RLIMIT_FSIZE must fail with EFBIG, not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the batch's worker processes)."""
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _method(tmp: Path) -> tuple[str, str]:
    """The method to use and why the better ones are not."""
    forced = os.environ.get("ICNN_TEST_FULL_DISK", "").strip()
    if forced and forced not in METHODS:
        pytest.fail(f"ICNN_TEST_FULL_DISK={forced!r}: give one of {', '.join(METHODS)}")
    why = []
    for method in METHODS:
        if forced and method != forced:
            continue
        if method == "tmpfs":
            problem = _try_mount(tmp, "24m")
            if problem is None:
                return method, ""
            why.append(f"tmpfs: {problem}")
        elif method == "rlimit":
            if sys.platform.startswith("linux") and hasattr(resource, "prlimit"):
                return method, "; ".join(why)
            why.append("rlimit: no prlimit on this platform")
        else:
            return method, "; ".join(why)
    pytest.skip(f"ICNN_TEST_FULL_DISK={forced}: not available here ({'; '.join(why)})")


@pytest.fixture
def full_disk(tmp_path, monkeypatch, capsys):
    """A :class:`FullDisk` whose ``root`` is an empty folder; put the run's ``--out`` at
    ``root / "out"`` (the ``rlimit`` way reads that folder's ``summary.csv``)."""
    root = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    method, why = _method(root)
    if why:
        print(f"full disk by {method} ({why})")
    disk = FullDisk(method, root, monkeypatch, capsys)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        yield disk
    finally:
        disk.free()
        # A run in this process may have lowered its own limit; pytest writes files after the test.
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        if method == "tmpfs":
            subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=30)
