"""Run the dicom3tools IOD validator (``dciodvfy``) on a file and parse its findings.

Tests that write DICOM import :func:`run_dciodvfy` and assert that the error list is empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["run_dciodvfy"]


def run_dciodvfy(path: str | os.PathLike[str]) -> tuple[list[str], list[str], str]:
    """Validate ``path`` against its IOD with ``dciodvfy``.

    Returns
    -------
    errors, warnings, output
        The ``Error`` and ``Warning`` lines (also those that name an element first), and the
        whole report (``dciodvfy`` writes it to standard error).

    Raises
    ------
    RuntimeError
        ``dciodvfy`` is not installed (Debian/Ubuntu package ``dicom3tools``), could not open the
        file, or did not run.
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise RuntimeError(
            "dciodvfy not found on PATH: install dicom3tools (apt-get install dicom3tools) to validate DICOM output"
        )
    try:
        proc = subprocess.run(
            [exe, os.fspath(path)], capture_output=True, text=True, errors="replace", timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"dciodvfy did not finish within 120 s on {path}") from exc
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    # Findings about one element carry its tag first: "(0x0010,0x0010) PN ... - Error - ...".
    errors = [line for line in lines if line.startswith("Error") or " - Error - " in line]
    warnings = [line for line in lines if line.startswith("Warning") or " - Warning - " in line]
    if (
        any(line.startswith("Abort") for line in lines)
        or proc.returncode not in (0, 1)
        or (proc.returncode == 1 and not errors)
    ):
        raise RuntimeError(f"dciodvfy failed on {path} (exit {proc.returncode}):\n{output}")
    return errors, warnings, output
