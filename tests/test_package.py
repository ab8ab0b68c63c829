"""The distribution: console command, napari manifest, shared vocabulary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from napari_icnn.errors import DeclinedInput, InputError
from napari_icnn.parts import PART_KEYS, filter_display_name


def test_npe2_manifest_validates_from_installed_package():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-icnn"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr)


def test_npe2_manifest_is_the_top_level_file():
    from pathlib import Path

    import napari_icnn

    pkg = Path(napari_icnn.__file__).parent / "napari.yaml"
    top = Path(napari_icnn.__file__).parent.parent / "napari.yaml"
    assert pkg.read_text() == top.read_text()


# The product's commands, in the order ``icnn --help`` lists them.
COMMANDS = ("synth", "train", "calibrate", "evaluate", "audit", "explain", "infer", "demo")


def _console_script() -> Path:
    # The console script sits next to the interpreter running the tests (the venv may not be on PATH).
    icnn = Path(sys.executable).parent / "icnn"
    assert icnn.exists(), f"console script not installed at {icnn}"
    return icnn


def _listed_commands(help_text: str) -> list[str]:
    """The sub-command names in ``icnn --help``: the lines indented by four spaces below ``COMMAND``
    (their help text continues on lines indented further)."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "COMMAND") + 1
    names = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break  # the next section ("options:")
        if re.match(r"^ {4}\S", line):
            names.append(line.split()[0])
    return names


def test_every_command_has_its_module():
    import napari_icnn.cli

    modules = {p.stem for p in Path(napari_icnn.cli.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(COMMANDS)


def test_console_command_lists_subcommands():
    out = subprocess.run([str(_console_script()), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: icnn ")
    assert _listed_commands(out.stdout) == list(COMMANDS)


def test_every_subcommand_has_help():
    icnn = str(_console_script())
    # Side by side: each start imports the package (seconds on a loaded machine).
    procs = {cmd: subprocess.Popen([icnn, cmd, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in COMMANDS}
    for cmd, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"icnn {cmd} --help: {stderr[-2000:]}"
        assert stdout.startswith(f"usage: icnn {cmd} "), stdout[:200]


def test_shared_vocabulary_keys():
    assert PART_KEYS == ("optic_disc", "fovea", "vessels", "MA", "HE", "EX", "SE", "NV")


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(clinician_name="cup rim", part_key="optic_disc", category="referable"), "filter 3 · cup rim"),
        (dict(part_key="EX", category="referable"), "filter 3 · hard exudates"),
        (dict(category="referable"), "filter 3 · referable"),
        (dict(category="HE"), "filter 3 · haemorrhages"),
        (dict(category="free"), "filter 3 · label-free, unnamed"),
        (dict(), "filter 3 · unnamed"),
        (dict(clinician_name="  "), "filter 3 · unnamed"),
    ],
)
def test_filter_display_name_precedence(kwargs, expected):
    assert filter_display_name(3, **kwargs) == expected


def test_input_errors_name_the_file():
    err = DeclinedInput("/data/ct.dcm", "modality CT is not a fundus photograph")
    assert isinstance(err, InputError) and isinstance(err, ValueError)
    assert str(err) == "/data/ct.dcm: modality CT is not a fundus photograph"
