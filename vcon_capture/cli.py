"""The ``vcon-capture`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from vcon_capture import __version__


def configure_logging(*, json_logs: bool, level: str = "info", stream: Any = None) -> None:
    """structlog to stderr: JSON in the daemon, key=value on a terminal."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_logs:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcon-capture", description="Turn phone calls into vCons.")
    parser.add_argument("--version", action="version", version=f"vcon-capture {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("VCON_CAPTURE_LOG_LEVEL", "warning"))
    parser.add_argument("--log-json", action="store_true", help="JSON log lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="capture files (pcap/pcapng, gzip) to vCons")
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ingest.add_argument("--out", type=Path, help="write <uuid>.vcon.json files into DIR")
    ingest.add_argument("--to", action="append", default=[], metavar="TARGET",
                        help="deliver to a conserver URL, a directory or redis://...; repeatable")
    ingest.add_argument("--token", help="API token for HTTP targets (or VCON_CAPTURE_TOKEN)")
    ingest.add_argument("--spool", type=Path, help="outbox directory for --to targets")
    ingest.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for delivery before leaving the rest in the outbox")
    ingest.add_argument("--domain", default=os.environ.get("VCON_CAPTURE_DOMAIN", "vcon-capture.invalid"),
                        help="domain name for the vCon uuid's custom bits (a domain you own)")
    ingest.add_argument("--workers", type=int, default=None, help="worker processes for audio (0 = inline)")
    ingest.add_argument("--engine", choices=("native", "tshark"), default="native",
                        help="packet engine: native (default, fast) or tshark via pyshark")
    ingest.add_argument("--tls-keylog", type=Path, help="TLS key log for SIP over TLS (tshark engine)")
    ingest.add_argument("--external-media", type=Path, metavar="DIR",
                        help="write recordings into DIR and reference them by url + content_hash")
    ingest.add_argument("--media-base-url", help="public base URL of --external-media DIR")
    ingest.add_argument("--no-progress", action="store_true")
    ingest.add_argument("--file-mode", default="0600", metavar="MODE",
                        help="permission bits of the vCon files written to --out and directory targets "
                             "(octal, default 0600: private to this user; the umask still applies)")
    ingest.add_argument("--no-fsync", action="store_true",
                        help="--out files are still atomic (temp file + rename) but not fsynced one by one: "
                             "much faster on slow disks; a crash of the machine may lose the last files")
    ingest.set_defaults(func=cmd_ingest)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, type=Path)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a daemon config file")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check_config)

    from delivery import cli as delivery_cli

    delivery_cli.register(sub)
    return parser


def _prestart_workers(args: argparse.Namespace) -> None:
    """If render workers will be used, start their fork server before importing the rest: it loads
    the renderer on the other core while this process loads the packet loop."""
    if args.engine == "tshark" or args.workers == 0:
        return
    from capture.workers import auto_workers, prestart

    sizes = []
    for path in args.files:
        try:
            sizes.append(os.path.getsize(path))
        except OSError:
            continue  # reported by ingest
    if args.workers or any(auto_workers(size) for size in sizes):
        prestart()


def cmd_ingest(args: argparse.Namespace) -> int:
    _prestart_workers(args)
    from capture.ingest import IngestOptions, ingest_file
    from capture.pcapio import CaptureError
    from conversation.assembler import AssemblyOptions
    from vcon_capture.output import build_output

    if args.out is None and not args.to:
        print("vcon-capture ingest: give --out DIR or --to TARGET", file=sys.stderr)
        return 2
    media_store = None
    if args.external_media is not None:
        from vcon_capture.output import directory_media_store

        media_store = directory_media_store(args.external_media, args.media_base_url)
    from delivery.atomic import parse_file_mode

    try:
        file_mode = parse_file_mode(args.file_mode)
    except ValueError as exc:
        print(f"vcon-capture ingest: --file-mode: {exc}", file=sys.stderr)
        return 2
    assembly = AssemblyOptions(domain=args.domain, inline_media=media_store is None, media_store=media_store)
    options = IngestOptions(assembly=assembly, workers=args.workers, progress=False if args.no_progress else None,
                            write_dir=args.out if not args.to else None, fsync=not args.no_fsync,
                            file_mode=file_mode)
    try:
        # With only --out the worker writes the files itself; targets go through the outbox here.
        output = build_output(out=args.out if args.to else None, targets=args.to, token=args.token,
                              spool=args.spool, file_mode=file_mode)
    except ValueError as exc:
        print(f"vcon-capture ingest: {exc}", file=sys.stderr)
        return 2
    status = 0
    with output:
        for path in args.files:
            try:
                if args.engine == "tshark":
                    from capture.tshark_engine import ingest_file_tshark

                    summary = ingest_file_tshark(path, output.put, options, keylog=args.tls_keylog)
                else:
                    summary = ingest_file(path, output.put, options, stderr=sys.stderr)
            except CaptureError as exc:
                print(f"vcon-capture: {exc}", file=sys.stderr)
                status = 2
                continue
            except OSError as exc:
                print(f"vcon-capture: {path}: {exc.strerror or exc}", file=sys.stderr)
                status = 2
                continue
            print(summary.line())
            if summary.error:
                print(f"vcon-capture: warning: {summary.error}", file=sys.stderr)
                status = 2
            elif summary.truncated_at is not None:
                print(
                    f"vcon-capture: warning: {path} is truncated at byte {summary.truncated_at}; "
                    "calls up to there were kept",
                    file=sys.stderr,
                )
        message = output.finish(wait=args.wait)
        if message:
            print(message)
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from vcon_capture.daemon import run_daemon

    return run_daemon(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from vcon_capture.config import load_config
    from vcon_capture.errors import ConfigError

    try:
        load_config(args.config)
    except ConfigError as exc:
        print(f"vcon-capture: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vcon-capture: {args.config}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(json_logs=args.log_json or args.command == "run", level=args.log_level)
    result = args.func(args)
    return int(result or 0)


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
