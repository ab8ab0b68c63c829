"""The one atomic writer every output goes through: whole files or none, permissions as any other output."""

from __future__ import annotations

import os
import stat

import pytest

from napari_icnn.atomic import atomic_write, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")

    def fail(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


@pytest.mark.parametrize("durable", [True, False])
def test_files_get_the_umask_permissions_and_parents_are_made(tmp_path, durable):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a" / "b.bin", lambda fh: fh.write(b"\x00\x01"), durable=durable)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the group, as any output (mkstemp gives 0o600)
