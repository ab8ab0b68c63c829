"""``icnn infer``: batch inference over DICOM and image files and folders, or over a PACS.

Writes DICOM SEG + SR (DICOM inputs), a PNG evidence sheet and a prediction JSON per image, and
DIR/summary.csv with one row per input file (per frame of multi-frame files) with its image quality.
A photograph too poor to grade is declined, without a probability or outputs (--keep-ungradeable
gives its verdict anyway; --decline-unfamiliar declines scans outside the model's experience too).
Exit code 0 when every input is ok, 3 when some are error or declined (see summary.csv) or some PACS transfers
failed, 2 for a usage or set-up problem (an unreachable PACS, refused credentials), 4 when the run
stopped because DIR's disk is full. Running again into the same DIR resumes: files already in
summary.csv are skipped, results already on the PACS are not stored again.

PACS: --from dicomweb+http(s)://HOST:PORT/PATH or dimse://AET@HOST:PORT pulls the studies named
with --study or --since instead of INPUT files; --store-to (same forms) stores every SEG and SR.
Credentials come from ICNN_PACS_USER + ICNN_PACS_PASSWORD or ICNN_PACS_TOKEN, or --pacs-config.
Research use only, not for clinical use.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_DISK_FULL = 4
"""The run stopped because the output folder's disk is full; with space, the same command resumes."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``infer`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser(
        "infer",
        help="batch inference over DICOM/image files and folders or a PACS (SEG, SR, PNG, JSON, summary.csv)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from napari_icnn.batch.config import batch_setting

    def opt(name: str, metavar: str | None = None, **kw: Any) -> None:
        # flag, help, default and choices from BatchConfig's fields: the Batch widget reads the same
        st = batch_setting(name)
        default = f" (default {st.default})" if st.default is not None and not st.choices else ""
        p.add_argument(st.flag, dest=name, default=st.default, metavar=metavar, help=st.help + default,
                       **({"choices": st.choices} if st.choices else {}), **kw)

    inputs = batch_setting("inputs")
    p.add_argument("inputs", nargs="*", metavar=inputs.flag, help=inputs.help)
    opt("out", "DIR", required=True)
    opt("model", "BUNDLE")
    opt("device")
    opt("batch", "B", type=int)
    opt("workers", "N", type=int)
    opt("scheduler", "ADDRESS")
    opt("formats", "LIST")
    opt("top_k", "K", type=int)
    for name in ("keep_ungradeable", "decline_unfamiliar"):
        st = batch_setting(name)
        p.add_argument(st.flag, dest=name, action="store_true", help=st.help)
    pacs = p.add_argument_group("PACS")
    pacs.add_argument("--from", dest="source", default=None, metavar="URL",
                      help="pull the inputs from a PACS: dicomweb+http(s)://HOST:PORT/PATH or dimse://AET@HOST:PORT")
    pacs.add_argument("--study", action="append", default=None, metavar="UID",
                      help="a Study Instance UID to pull (repeatable)")
    pacs.add_argument("--since", default=None, metavar="YYYYMMDD", help="pull the studies of this date or later")
    pacs.add_argument("--modality", default=None, metavar="LIST",
                      help="series modalities to pull, comma-separated (default OP; 'all' for every series)")
    pacs.add_argument("--store-to", default=None, metavar="URL",
                      help="store the SEG and SR results on a PACS (same forms as --from)")
    pacs.add_argument("--pacs-config", default=None, metavar="FILE",
                      help="PACS credentials and settings, JSON or TOML, readable by its owner only")
    pacs.add_argument("--keep-staging", action="store_true",
                      help="keep the retrieved instances in DIR/pacs-staging after processing")
    p.set_defaults(func=run)


def _batch_config(args: argparse.Namespace, inputs: tuple[str, ...]) -> Any:
    from napari_icnn.batch import BatchConfig

    return BatchConfig(
        inputs=inputs,
        out=args.out,
        model=args.model,
        device=args.device,
        batch=args.batch,
        workers=args.workers,
        scheduler=args.scheduler,
        formats=args.formats,
        top_k=args.top_k,
        keep_ungradeable=args.keep_ungradeable,
        decline_unfamiliar=args.decline_unfamiliar,
    )


def run(args: argparse.Namespace) -> int:
    """Run batch inference on the given files or on a PACS.

    Returns the summary's exit code (0, or 3 when some input is not ok); 2 for a set-up error, 4 when
    the disk filled up.
    """
    from napari_icnn.atomic import DiskFull
    from napari_icnn.errors import BundleError, ConfigError
    from napari_icnn.progress import TextProgress

    pacs_options = [f for f, v in (("--study", args.study), ("--since", args.since), ("--modality", args.modality),
                                   ("--keep-staging", args.keep_staging)) if v]
    if args.source is None and pacs_options:
        raise ConfigError(f"{', '.join(pacs_options)}: go with --from URL")
    if args.source is None and args.store_to is None:
        if args.pacs_config:
            raise ConfigError("--pacs-config: goes with --from URL or --store-to URL")
        return _run_files(args)
    if args.source is not None and args.inputs:
        raise ConfigError("give INPUT files or --from URL, not both")

    secrets: tuple[str, ...] = ()
    try:
        from napari_icnn.batch import preflight
        from napari_icnn.pacs import PacsJob, Query, load_settings, pacs_infer, parse_pacs_url
        from napari_icnn.pacs.source import modality_codes

        settings = load_settings(args.pacs_config)
        secrets = settings.secrets
        source = parse_pacs_url(args.source, "--from") if args.source is not None else None
        job = PacsJob(
            source=source,
            query=Query(tuple(args.study or ()), args.since, modality_codes(args.modality or "OP")) if source else None,
            store_to=parse_pacs_url(args.store_to, "--store-to") if args.store_to is not None else None,
            settings=settings,
            keep_staging=args.keep_staging,
        )
        cfg = _batch_config(args, tuple(args.inputs) or ((args.source,) if args.source is not None else ()))
        # Before any PACS is asked: the inputs pulled from one are checked as they arrive.
        preflight(cfg, inputs=args.source is None)
        progress = TextProgress(sys.stderr)

        def show(event: Any) -> None:
            progress(_redacted_event(event, secrets))

        try:
            summary = pacs_infer(job, cfg, on_event=show)
        except DiskFull as err:
            _stopped(show, err)
            return EXIT_DISK_FULL
    except (ConfigError, BundleError) as err:
        # Set-up problems (a PACS unreachable or refusing us, a broken model): nothing ran.
        print(f"icnn infer: error: {_redact(' '.join(str(err).split()), secrets)}", file=sys.stderr)
        return 2
    print(_redact(summary.describe(), secrets))
    return summary.exit_code


def _run_files(args: argparse.Namespace) -> int:
    from napari_icnn.atomic import DiskFull
    from napari_icnn.batch import infer
    from napari_icnn.errors import BundleError
    from napari_icnn.progress import TextProgress

    cfg = _batch_config(args, tuple(args.inputs))
    progress = TextProgress(sys.stderr)
    try:
        summary = infer(cfg, on_event=progress)
    except BundleError as err:
        # A model that cannot be used is a set-up problem: nothing ran.
        print(f"icnn infer: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except DiskFull as err:
        _stopped(progress, err)
        return EXIT_DISK_FULL
    print(summary.describe())
    return summary.exit_code


def _stopped(progress: Any, err: Exception) -> None:
    """The one line that says why the run stopped, through the progress printer so that it starts
    on a line of its own after a progress line a terminal was updating."""
    from napari_icnn.progress import Message

    progress(Message(f"icnn infer: error: {' '.join(str(err).split())}", level="error"))


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced: a last guard, the messages are written without them."""
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _redacted_event(event: Any, secrets: tuple[str, ...]) -> Any:
    from dataclasses import replace

    from napari_icnn.progress import Message

    if secrets and isinstance(event, Message):
        return replace(event, text=_redact(event.text, secrets))
    return event
