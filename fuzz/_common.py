"""Shared plumbing for the atheris harnesses in ``fuzz/``.

Each harness imports the parser it fuzzes inside ``atheris.instrument_imports()`` first, then calls
:func:`run` with its ``TestOneInput`` and a function yielding seed inputs. Seeds come from the real
fixtures (``tests/`` and ``../shared/corpus``); the seed helpers import the capture modules lazily so
the harness's instrumented import is the one that counts.

Command line (libFuzzer flags pass through)::

    python fuzz/fuzz_sip.py -atheris_runs=100000            # corpus in fuzz/.corpus/sip
    python fuzz/fuzz_sip.py -atheris_runs=2000 /tmp/c       # corpus dir of your choice (seeded if empty)
    python fuzz/fuzz_sip.py fuzz/crashes/crash-abc          # replay one input

The invariant every harness asserts (h11's ``fuzz/afl-server.py``): any bytes either parse or raise
the parser's own error class; anything else escaping is a bug and libFuzzer reports it as a crash.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
SHARED = REPO.parent / "shared" / "corpus"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MAX_SEEDS = 400
"""Seeds per harness: enough to cover every fixture without slowing start-up."""


def run(name: str, test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]],
        *, max_len: int = 4096) -> None:
    """Seed the corpus (first positional directory, or ``fuzz/.corpus/<name>``) and fuzz."""
    import atheris

    argv = list(sys.argv)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        corpus = FUZZ_DIR / ".corpus" / name
        argv.append(str(corpus))
        dirs = [str(corpus)]
    first = Path(dirs[0])
    if not first.is_file():
        first.mkdir(parents=True, exist_ok=True)
        if not any(first.iterdir()):
            write_seeds(first, seeds())
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append(f"-max_len={max_len}")
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        crashes = FUZZ_DIR / "crashes"
        crashes.mkdir(exist_ok=True)
        argv.append(f"-artifact_prefix={crashes}/{name}-")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def write_seeds(directory: Path, seeds: Iterable[bytes]) -> int:
    n = 0
    seen: set[str] = set()
    for seed in seeds:
        digest = hashlib.sha1(seed).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        (directory / f"seed-{digest[:16]}").write_bytes(seed)
        n += 1
        if n >= MAX_SEEDS:
            break
    if n == 0:
        (directory / "seed-empty").write_bytes(b"")
    return n


# -- seed sources -----------------------------------------------------------------------------------


def files(*patterns: str, limit: int = 64 * 1024) -> Iterator[bytes]:
    """Fixture files by glob under the repository or the shared corpus (``shared:`` prefix)."""
    for pattern in patterns:
        base = REPO
        if pattern.startswith("shared:"):
            base, pattern = SHARED, pattern.removeprefix("shared:")
        for path in sorted(base.glob(pattern)):
            if path.is_file():
                yield path.read_bytes()[:limit]


def lines(*patterns: str) -> Iterator[bytes]:
    """Each non-empty line of the matching fixture files (JSONL, forms)."""
    for data in files(*patterns):
        for line in data.splitlines():
            if line.strip():
                yield line


def sip_messages() -> Iterator[bytes]:
    yield from files("tests/sip/data/*.sip")
    yield from udp_payloads(kind="sip")


def sdp_bodies() -> Iterator[bytes]:
    for msg in sip_messages():
        _, sep, body = msg.partition(b"\r\n\r\n")
        if sep and body.startswith(b"v="):
            yield body


def capture_files() -> list[Path]:
    return sorted(p for p in (SHARED / "pcap").glob("*") if p.is_file()) + [REPO / "pcaps" / "sipp-calls.pcap"]


def frames(limit_per_file: int = 12) -> Iterator[tuple[int, bytes]]:
    """(linktype, frame) from every capture in the shared corpus."""
    from capture.pcapio import CaptureError, open_capture

    for path in capture_files():
        try:
            with open_capture(path) as reader:
                for i, rec in enumerate(reader):
                    if i >= limit_per_file:
                        break
                    ts, linktype, frame = rec[0], rec[1], rec[2]
                    del ts
                    yield linktype, bytes(frame)
        except (CaptureError, OSError):
            continue


def udp_payloads(*, kind: str, limit_per_file: int = 20) -> Iterator[bytes]:
    """UDP payloads from the shared captures: ``sip``, ``rtp`` (0x80.. first byte) or ``any``."""
    from capture.netlayers import PacketDecoder
    from capture.pcapio import CaptureError, open_capture
    from capture.sip import looks_like_sip

    for path in capture_files():
        found = 0
        decoder = PacketDecoder()
        try:
            with open_capture(path) as reader:
                for rec in reader:
                    dg = decoder.decode(rec[0], rec[1], bytes(rec[2]))
                    if dg is None or not dg.payload:
                        continue
                    payload = bytes(dg.payload)
                    is_sip = looks_like_sip(payload.lstrip(b"\r\n"))
                    if kind == "sip" and not is_sip:
                        continue
                    if kind == "rtp" and (is_sip or payload[0] & 0xC0 != 0x80):
                        continue
                    yield payload
                    found += 1
                    if found >= limit_per_file:
                        break
        except (CaptureError, OSError):
            continue


def tcp_segments(limit: int = 200) -> Iterator[tuple[tuple[str, int, str, int], int, int, bytes]]:
    """(flow key, seq, flags, payload) of TCP segments in the shared captures."""
    from capture.netlayers import PROTO_TCP, PacketDecoder
    from capture.pcapio import CaptureError, open_capture

    n = 0
    for path in capture_files():
        decoder = PacketDecoder()
        try:
            with open_capture(path) as reader:
                for rec in reader:
                    dg = decoder.decode(rec[0], rec[1], bytes(rec[2]))
                    if dg is None or dg.proto != PROTO_TCP:
                        continue
                    yield (dg.src, dg.sport, dg.dst, dg.dport), dg.tcp_seq, dg.tcp_flags, bytes(dg.payload)
                    n += 1
                    if n >= limit:
                        return
        except (CaptureError, OSError):
            continue
