"""``vcon-capture outbox status|flush|retry-dead`` and ``vcon-capture verify``.

The lead's CLI calls :func:`register` with its subparsers and later ``args.func(args)``; ``python -m
delivery.cli ...`` runs the same commands standalone (the crash tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import default_spool_dir

if TYPE_CHECKING:
    from .targets import Target

# The outbox, targets and signing modules (sqlite3, httpx, cryptography) are imported by the
# commands that use them: every other command of the CLI starts without loading them.

__all__ = ["main", "register"]

#: Default seconds `outbox flush` keeps trying before giving up (exit 1, rows stay pending).
DEFAULT_FLUSH_WAIT = 60.0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``outbox`` (with ``status``, ``flush``, ``retry-dead``) and ``verify`` to a CLI."""
    outbox = subparsers.add_parser("outbox", help="inspect and drive the delivery outbox")
    actions = outbox.add_subparsers(dest="outbox_command", required=True)

    def spool_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--spool", type=Path, default=None, help=f"outbox directory (default {default_spool_dir()})"
        )

    status = actions.add_parser("status", help="pending / delivered / dead counts per target")
    spool_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--dead", action="store_true", help="also list dead letters with the upstream reply")
    status.set_defaults(func=cmd_status)

    flush = actions.add_parser("flush", help="deliver everything pending now (exit 1 if some is left)")
    spool_arg(flush)
    flush.add_argument("--to", action="append", default=[], metavar="TARGET", help="extra target (repeatable)")
    flush.add_argument("--token", default=None, help="conserver API token (else VCON_CAPTURE_TOKEN)")
    flush.add_argument(
        "--wait", type=float, default=DEFAULT_FLUSH_WAIT, metavar="SECONDS", help="give up after this long"
    )
    flush.add_argument("--concurrency", type=int, default=4, help="deliveries in flight per target")
    flush.set_defaults(func=cmd_flush)

    retry = actions.add_parser("retry-dead", help="move dead letters back to pending")
    spool_arg(retry)
    retry.set_defaults(func=cmd_retry_dead)

    verify = subparsers.add_parser("verify", help="verify a signed (or encrypted) vCon file")
    verify.add_argument("file", type=Path)
    verify.add_argument("--trust", type=Path, action="append", default=None, metavar="CA.pem",
                        help="trusted CA certificate(s); without it only integrity is checked")
    verify.add_argument("--key", type=Path, default=None, metavar="KEY.pem",
                        help="private key to decrypt an encrypted vCon")
    verify.add_argument("--print", dest="print_vcon", action="store_true", help="print the verified vCon")
    verify.set_defaults(func=cmd_verify)


def _spool(args: argparse.Namespace) -> Path:
    return Path(args.spool) if args.spool is not None else default_spool_dir()


def cmd_status(args: argparse.Namespace) -> int:
    from .outbox import Outbox

    with Outbox(_spool(args), []) as outbox:
        counts = outbox.status()
        dead = outbox.dead_letters() if args.dead else []
    if args.json:
        payload: dict[str, Any] = {
            key: {"pending": c.pending, "delivered": c.delivered, "dead": c.dead} for key, c in counts.items()
        }
        if args.dead:
            payload = {"targets": payload, "dead_letters": dead}
        print(json.dumps(payload, indent=2))
        return 0
    if not counts:
        print("outbox is empty")
    for key, c in counts.items():
        print(f"{key}\tpending={c.pending}\tdelivered={c.delivered}\tdead={c.dead}")
    for row in dead:
        print(f"dead {row['uuid']} -> {row['target']}: {row['error']}\n  {row['response'] or ''}".rstrip())
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    from .outbox import Outbox, load_targets
    from .targets import TargetError, parse_target

    spool = _spool(args)
    try:
        targets: list[Target] = load_targets(spool, token=args.token)
        known = {target.key for target in targets}
        for spec in args.to:
            target = parse_target(spec, token=args.token)
            if target.key not in known:
                targets.append(target)
                known.add(target.key)
    except TargetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Outbox(spool, targets, concurrency=args.concurrency) as outbox:
        outbox.expedite()
        result = asyncio.run(outbox.deliver(until_empty=True, deadline=outbox.deadline_in(args.wait)))
    print(
        f"delivered={result.delivered} failed_attempts={result.failed_attempts} dead={result.dead} "
        f"pending={result.pending}"
    )
    return 0 if result.pending == 0 else 1


def cmd_retry_dead(args: argparse.Namespace) -> int:
    from .outbox import Outbox

    with Outbox(_spool(args), []) as outbox:
        moved = outbox.retry_dead()
    print(f"{moved} dead letter(s) back to pending; run `outbox flush` or let the daemon deliver them")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .signing import VerifyError, decrypt_vcon, verify_vcon

    try:
        doc = json.loads(Path(args.file).read_bytes())
        if not isinstance(doc, dict):
            raise VerifyError("not a JSON object")
        if "ciphertext" in doc:
            if args.key is None:
                raise VerifyError("the vCon is encrypted: pass --key KEY.pem")
            doc = decrypt_vcon(doc, Path(args.key).read_bytes())
        trust = [Path(path).read_bytes() for path in args.trust] if args.trust else None
        vcon = verify_vcon(doc, trust=trust)
    except (OSError, ValueError, VerifyError) as exc:
        print(f"{args.file}: NOT verified: {exc}", file=sys.stderr)
        return 1
    scope = "chain trusted" if args.trust else "integrity only, no --trust given"
    print(f"{args.file}: verified vCon {vcon.get('uuid')} ({scope})")
    if args.print_vcon:
        print(json.dumps(vcon, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delivery.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
