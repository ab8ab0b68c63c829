"""The per-file work of a batch, as plain functions that run in worker processes (local pool or
Dask workers) and never raise but for a full disk (:class:`~napari_icnn.atomic.DiskFull`, the end of
the run): every other outcome is a summary :class:`Row` or prepared input.

- :func:`prepare_file`: read and decode a file, check each frame is a colour fundus photograph,
  preprocess it for the network (no torch needed).
- :func:`explain_rows`: the network over a batch of prepared frames (in the process that holds the
  model); a frame whose verdict the image-quality gate withholds becomes its ``declined`` row here.
- :func:`write_frame`: write one explained frame's outputs.
- :func:`process_file`: all of it for one file, the network included (a Dask task).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_icnn.atomic import DiskFull, disk_full_errno
from napari_icnn.batch.outputs import OutputSpec, write_outputs
from napari_icnn.batch.privacy import phi_values, scrub
from napari_icnn.batch.summary import Row, one_line
from napari_icnn.errors import DeclinedInput, InputError

if TYPE_CHECKING:
    from napari_icnn.data.fov import FOV
    from napari_icnn.data.geometry import Geometry
    from napari_icnn.explain import Explanation
    from napari_icnn.image import FundusImage

__all__ = ["Prepared", "ClusterJob", "GateRule", "prepare_file", "write_frame", "explain_rows", "process_file",
           "check_worker", "KEPT_NOTE"]


KEPT_NOTE = "verdict kept although the image-quality gate declined the photograph (--keep-ungradeable)"
"""What the ``reason`` of an ``ok`` row says when its scan was kept although the gate declined it."""


@dataclass(frozen=True)
class GateRule:
    """Which scans the image-quality gate (:class:`~napari_icnn.gate.Gate`) withholds the verdict on."""

    keep_ungradeable: bool = False
    """Give the verdict on an ungradeable photograph anyway (its row and outputs still say it is ungradeable)."""
    decline_unfamiliar: bool = False
    """Withhold the verdict on a scan outside the model's experience too."""

    def withheld(self, gate: Any) -> bool:
        """Whether the verdict on a scan with ``gate`` is withheld (``None``: not assessed, never withheld)."""
        return gate is not None and gate.withheld(self.keep_ungradeable)


@dataclass(frozen=True)
class Prepared:
    """One frame ready for the network: the frame, its network input and the crop geometry."""

    input_path: str
    image: FundusImage
    x: np.ndarray
    """``(3, size, size)`` float32."""
    geometry: Geometry
    phi: tuple[str, ...] = ()
    """Patient-identifying header values, kept to scrub later reasons."""
    fov: FOV | None = None
    """The frame's field of view (for the evidence flags: peaks outside it or on its rim); found again
    when not given."""

    def network_input(self) -> tuple[Any, ...]:
        """What :func:`~napari_icnn.explain.explain_batch` takes as ``prepared`` for this frame."""
        return (self.x, self.geometry) if self.fov is None else (self.x, self.geometry, self.fov)


def _reason(exc: BaseException, phi: list[str] | tuple[str, ...], doing: str) -> tuple[str, str]:
    """(status, reason) for an exception raised while ``doing`` something with one input."""
    if isinstance(exc, DeclinedInput):
        status, text = "declined", exc.reason
    elif isinstance(exc, InputError):
        status, text = "error", exc.reason
    elif isinstance(exc, MemoryError):
        status, text = "error", f"not enough memory while {doing}"
    else:
        status, text = "error", f"unexpected failure while {doing} ({type(exc).__name__}: {exc})"
    return status, one_line(scrub(str(text), list(phi)))


def prepare_file(path: str, size: int) -> list[Prepared | Row]:
    """Every frame of ``path`` prepared for a network with ``size``-pixel input, or the rows that
    say why a frame (or the whole file) cannot be used. Never raises."""
    from napari_icnn.data.fov import check_fundus
    from napari_icnn.data.image_io import iter_images
    from napari_icnn.data.transforms import preprocess
    from napari_icnn.dicom.carry import source_uid
    from napari_icnn.dicom.read import is_dicom, read_header

    items: list[Prepared | Row] = []
    phi: list[str] = []
    sop = ""
    n_frames = 1
    count = 0
    try:
        if os.path.isdir(path):
            os.listdir(path)  # raises with the reason it cannot be searched
            raise InputError(path, "is a folder that could not be searched")
        if not os.path.exists(path):
            raise InputError(path, "file not found (a broken link?)" if os.path.islink(path) else "file not found")
        if is_dicom(path):
            try:
                header = read_header(path)
            except InputError:
                header = None  # iter_images raises the precise reason below
            if header is not None:
                phi = phi_values(header)
                sop = source_uid(header, "SOPInstanceUID") or ""  # a stray value never reaches the summary
                try:
                    n_frames = int(header.get("NumberOfFrames") or 1)
                except Exception:  # noqa: BLE001 - an unusable count is the reader's to report
                    n_frames = 1
        for image in iter_images(path):
            frame = image.frame
            try:
                fov = check_fundus(image.pixels, path)
                x, geom, _ = preprocess(image.pixels, size, fov)
                items.append(Prepared(path, image, x, geom, tuple(phi), fov))
            except Exception as exc:  # noqa: BLE001 - one frame's refusal is that frame's row
                status, reason = _reason(exc, phi, "preparing the image")
                items.append(Row(path, frame, image.sop_instance_uid or sop, status, reason))
            count += 1
    except OSError as exc:
        items.append(Row(path, None, sop, "error", one_line(f"cannot read: {exc.strerror or exc}")))
    except Exception as exc:  # noqa: BLE001 - decoders raise anything; it is this file's row
        status, reason = _reason(exc, phi, "reading the file")
        # A failure after some frames of a multi-frame file belongs to the frame it stopped at.
        frame = count if (count > 0 or n_frames > 1) else None
        items.append(Row(path, frame, sop, status, reason))
    if not items:
        items.append(Row(path, None, sop, "error", "no image found in the file"))
    return items


def write_frame(spec: OutputSpec, prepared: Prepared, expl: Explanation) -> Row:
    """Write the outputs of one explained frame; the frame's summary row.

    Raises
    ------
    DiskFull
        The output folder has no room left: that is the run's end, not this frame's error (its
        outputs written so far are complete, and are written again by the run that resumes).
    """
    image = prepared.image
    sop = image.sop_instance_uid or ""
    probability = float(np.clip(expl.probability, 0.0, 1.0))
    gate = Row.gate_fields(expl.gate)
    try:
        written, problems, notes = write_outputs(spec, image, expl, prepared.input_path)
    except OSError as exc:
        code = disk_full_errno(exc)
        if code is not None:
            raise DiskFull(spec.out, code) from None
        _, reason = _reason(exc, prepared.phi, "writing the outputs")
        return Row(prepared.input_path, image.frame, sop, "error", reason, probability, **gate)
    except Exception as exc:  # noqa: BLE001
        _, reason = _reason(exc, prepared.phi, "writing the outputs")
        return Row(prepared.input_path, image.frame, sop, "error", reason, probability, **gate)
    if problems:
        reason = one_line(scrub("could not write " + "; ".join(problems), list(prepared.phi)))
        return Row(prepared.input_path, image.frame, sop, "error", reason, probability, tuple(written), **gate)
    # e.g. --formats seg,sr for a PNG input: the prediction is made, no requested format applies
    if not written:
        notes = notes or ["no requested output format applies to this input (SEG and SR need a DICOM source)"]
    if expl.gate is not None and expl.gate.declined:  # only a kept scan reaches here (see explain_rows)
        notes = [KEPT_NOTE, *notes]
    return Row(prepared.input_path, image.frame, sop, "ok", one_line("; ".join(notes)), probability, tuple(written),
               **gate)


def _declined_row(p: Prepared, expl: Explanation) -> Row:
    """The row of a frame whose verdict the gate withholds: its reason, no probability, no outputs."""
    reason = one_line(scrub(expl.gate.message, list(p.phi)))
    return Row(p.input_path, p.image.frame, p.image.sop_instance_uid or "", "declined", reason,
               **Row.gate_fields(expl.gate))


def explain_rows(
    model: Any, prepared: list[Prepared], rule: GateRule = GateRule()
) -> list[tuple[Prepared, Explanation | Row]]:
    """The network over ``prepared`` frames in one batch, each frame's image quality and familiarity
    assessed (:attr:`~napari_icnn.explain.Explanation.gate`): each frame's explanation, or its row when
    the gate withholds its verdict (``declined``, by ``rule``) or it fails (``error``). A batch that fails
    is retried frame by frame so one bad frame fails alone."""
    from napari_icnn.explain import explain_batch

    def run(frames: list[Prepared]) -> list[Explanation]:
        return explain_batch([p.image for p in frames], model, prepared=[p.network_input() for p in frames],
                             decline_unfamiliar=rule.decline_unfamiliar)

    if not prepared:
        return []
    try:
        expls = run(prepared)
    except Exception:  # noqa: BLE001 - find the frame that fails
        if len(prepared) == 1:
            p = prepared[0]
            try:
                expls = run(prepared)
            except Exception as exc:  # noqa: BLE001
                _, reason = _reason(exc, p.phi, "running the model")
                return [(p, Row(p.input_path, p.image.frame, p.image.sop_instance_uid or "", "error", reason))]
        else:
            out: list[tuple[Prepared, Explanation | Row]] = []
            for p in prepared:
                out += explain_rows(model, [p], rule)
            return out
    return [(p, _declined_row(p, e) if rule.withheld(e.gate) else e) for p, e in zip(prepared, expls)]


# --------------------------------------------------------------------------- cluster tasks


@dataclass(frozen=True)
class ClusterJob:
    """What a cluster worker needs to process files on its own."""

    model_path: str
    model_sha256: str
    device: str
    batch: int
    spec: OutputSpec
    rule: GateRule = GateRule()


_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _worker_model(job: ClusterJob) -> Any:
    """The job's model, loaded once per worker process."""
    from napari_icnn.bundle import load_bundle
    from napari_icnn.errors import BundleError

    key = (job.model_path, job.device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_bundle(job.model_path, job.device)
            _MODELS[key] = model
    if model.sha256 != job.model_sha256:
        raise BundleError(
            f"{job.model_path}: the bundle this worker sees differs from the client's (SHA-256 of the weights)"
        )
    return model


def process_file(path: str, job: ClusterJob) -> list[Row]:
    """Everything for one file on a cluster worker: rows in frame order. Raises only
    :class:`~napari_icnn.atomic.DiskFull` (see :func:`write_frame`)."""
    try:
        model = _worker_model(job)
    except Exception as exc:  # noqa: BLE001 - reported against the file; the run goes on
        return [Row(path, None, "", "error", one_line(f"model not usable on this worker: {exc}"))]
    rows: list[Row] = []
    items = prepare_file(path, model.size)
    frames = [i for i in items if isinstance(i, Prepared)]
    rows += [i for i in items if isinstance(i, Row)]
    for start in range(0, len(frames), job.batch):
        for p, result in explain_rows(model, frames[start : start + job.batch], job.rule):
            rows.append(result if isinstance(result, Row) else write_frame(job.spec, p, result))
    return sorted(rows, key=lambda r: -1 if r.frame is None else r.frame)


def check_worker(out: str, model_path: str) -> str | None:
    """Whether this machine sees the output folder (writable) and the model bundle; ``None`` if so,
    else what is wrong."""
    problems = []
    if not os.path.isdir(out):
        problems.append(f"output folder {out} is not visible here")
    elif not os.access(out, os.W_OK):
        problems.append(f"output folder {out} is not writable here")
    if not (Path(model_path) / "configs" / "metadata.json").is_file():
        problems.append(f"model bundle {model_path} is not visible here")
    return "; ".join(problems) or None
