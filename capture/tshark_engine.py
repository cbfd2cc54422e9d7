"""The optional tshark engine: SIP read by Wireshark's dissectors, RTP read natively, one CaptureEngine.

For what the native path cannot read: SIP over SCTP (RFC 4168) and SIP over TLS decrypted with a
key log (``-o tls.keylog_file:...``, NSS key log format as browsers and OpenSSL's ``SSLKEYLOGFILE``
write it). tshark runs twice over the file, streaming, with the display filter ``sip``:

* ``-T fields`` gives each SIP frame's number, time and innermost addresses and ports;
* ``-T ek -x -j sip`` gives, for the same frames in the same order, the raw bytes of each SIP message
  (after TCP/WebSocket reassembly, SCTP, or TLS decryption: ``sip_raw``).

Meanwhile the capture is read natively, frame by frame: a frame tshark reported as SIP is fed to the
engine as those SIP messages (so SIP over UDP, TCP, WebSocket, SCTP and TLS all come from tshark),
and every other UDP datagram goes to the engine as on the native path (RTP and its routing). Frame
numbers line the two up exactly, and the time of a message is the native record timestamp, so on a
capture both paths can read the result is the same as the native engine's.

pyshark would work the same way but parses the per-field JSON in Python and is far slower; the
subprocess streams keep memory flat for any file size.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from capture.engine import CaptureEngine
from capture.ingest import IGNORED_REASONS, CallCompleter, FileSummary, IngestOptions, VconHandler
from capture.netlayers import PacketDecoder
from capture.pcapio import CaptureError, open_capture
from capture.sip import looks_like_sip

log = structlog.get_logger("vcon_capture.tshark")

_META_FIELDS = (
    "frame.number", "frame.time_epoch",
    "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
    "udp.srcport", "tcp.srcport", "sctp.srcport",
    "udp.dstport", "tcp.dstport", "sctp.dstport",
)


class TsharkError(RuntimeError):
    """tshark is missing or failed on the file."""


@dataclass(frozen=True, slots=True)
class SipFrame:
    """The SIP messages tshark found in one frame."""

    number: int
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    messages: tuple[bytes, ...]


def tshark_available(tshark: str = "tshark") -> bool:
    return shutil.which(tshark) is not None


def _base_args(tshark: str, path: Path, keylog: Path | None) -> list[str]:
    args = [tshark, "-r", str(path), "-n", "-Y", "sip"]
    if keylog is not None:
        args += ["-o", f"tls.keylog_file:{keylog}"]
    return args


def _meta_args(tshark: str, path: Path, keylog: Path | None) -> list[str]:
    args = _base_args(tshark, path, keylog) + ["-T", "fields", "-E", "occurrence=l", "-E", "separator=/t"]
    for f in _META_FIELDS:
        args += ["-e", f]
    return args


def _raw_args(tshark: str, path: Path, keylog: Path | None) -> list[str]:
    return _base_args(tshark, path, keylog) + ["-T", "ek", "-x", "-j", "sip"]


def _port(*values: str) -> int:
    for v in values:
        if v:
            try:
                return int(v)
            except ValueError:
                continue
    return 0


def _parse_meta(line: str) -> tuple[int, float, tuple[str, int], tuple[str, int]]:
    cols = line.rstrip("\n").split("\t")
    cols += [""] * (len(_META_FIELDS) - len(cols))
    number = int(cols[0])
    ts = float(cols[1] or 0.0)
    src = (cols[2] or cols[3], _port(cols[6], cols[7], cols[8]))
    dst = (cols[4] or cols[5], _port(cols[9], cols[10], cols[11]))
    return number, ts, src, dst


def _raw_messages(doc: dict[str, Any]) -> tuple[bytes, ...]:
    raw = doc.get("layers", {}).get("sip_raw")
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(bytes.fromhex(item))
            except ValueError:
                continue
    return tuple(out)


def iter_sip_frames(
    path: Path, *, keylog: Path | None = None, tshark: str = "tshark"
) -> Generator[SipFrame, None, None]:
    """Stream the SIP frames of ``path`` as tshark dissects them; raises TsharkError."""
    exe = shutil.which(tshark)
    if exe is None:
        raise TsharkError(f"{tshark} not found (install tshark for --engine tshark)")
    meta = subprocess.Popen(_meta_args(exe, path, keylog), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    raw = subprocess.Popen(_raw_args(exe, path, keylog), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    assert meta.stdout is not None and raw.stdout is not None
    try:
        docs = _ek_documents(raw.stdout)
        for line in meta.stdout:
            if not line.strip():
                continue
            number, ts, src, dst = _parse_meta(line)
            doc = next(docs, None)
            if doc is None:
                break
            yield SipFrame(number, ts, src, dst, _raw_messages(doc))
    finally:
        for proc in (meta, raw):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    for proc in (meta, raw):
        if proc.returncode not in (0, -9):
            raise TsharkError(f"tshark failed on {path} (exit {proc.returncode})")


def _ek_documents(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if not line.startswith('{"timestamp"') and '"layers"' not in line[:64]:
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "layers" in doc:
            yield doc


def ingest_file_tshark(
    path: Path,
    handler: VconHandler,
    options: IngestOptions | None = None,
    *,
    keylog: Path | None = None,
    tshark: str = "tshark",
) -> FileSummary:
    """Ingest one capture with SIP dissected by tshark; ``handler`` gets each vCon dict.

    Raises :class:`~capture.pcapio.CaptureError` for a file that is not a capture (as the native
    path does) and :class:`TsharkError` when tshark is missing or fails.
    """
    opts = options or IngestOptions()
    summary = FileSummary(path=str(path))
    started = time.monotonic()
    reader = open_capture(path)
    work_root = Path(tempfile.mkdtemp(prefix="vcon-capture-tshark-", dir=opts.work_dir))
    engine = CaptureEngine(work_root, opts.engine)
    decoder = PacketDecoder()
    counters: Counter[str] = Counter()
    frames = iter_sip_frames(path, keylog=keylog, tshark=tshark)
    pending = next(frames, None)
    packets = 0

    # As the native engine does, inline: with write_dir the vCons are written there, else handed over.
    completer = CallCompleter(0, opts.assembly, handler, opts.write_dir, opts.fsync, opts.file_mode)

    def complete_ready() -> None:
        for job in engine.drain():
            summary.calls += 1
            completer.submit(job)

    try:
        with reader:
            try:
                for ts, linktype, frame in reader:
                    packets += 1
                    while pending is not None and pending.number < packets:
                        pending = next(frames, None)  # frames the native reader never saw: none expected
                    dg = decoder.decode(ts, linktype, frame)
                    if pending is not None and pending.number == packets:
                        sip_frame, pending = pending, next(frames, None)
                        src = (dg.src, dg.sport) if dg is not None and dg.proto == 17 else sip_frame.src
                        dst = (dg.dst, dg.dport) if dg is not None and dg.proto == 17 else sip_frame.dst
                        counters["tshark-sip-frames"] += 1
                        for message in sip_frame.messages:
                            engine.handle_sip_bytes(message, src, dst, ts)
                        engine.advance(ts)
                    elif dg is not None and dg.proto == 17:
                        if looks_like_sip(dg.payload):
                            counters["sip-not-dissected-by-tshark"] += 1
                        engine.handle_datagram(dg)
                    else:
                        engine.advance(ts)
                    if packets % 4096 == 0:
                        complete_ready()
            except CaptureError as exc:
                summary.error = str(exc)
            summary.truncated_at = reader.truncated_at
        engine.finish_all()
        complete_ready()
        completer.close()
        for _ in frames:  # let tshark finish, so a failure is reported
            pass
    finally:
        frames.close()
        shutil.rmtree(work_root, ignore_errors=True)
    summary.packets = packets
    summary.vcons = completer.done
    reasons: Counter[str] = Counter(decoder.skipped)
    for name, value in engine.counters.items():
        if name.startswith("sip-malformed") or name == "unmatched-datagrams":
            reasons[name] += value
    summary.skipped_by_reason = reasons
    summary.skipped = sum(v for k, v in reasons.items() if k not in IGNORED_REASONS)
    summary.seconds = time.monotonic() - started
    log.info("ingest.file", engine="tshark", file=str(path), calls=summary.calls, vcons=summary.vcons,
             packets=packets, skipped=summary.skipped, keylog=str(keylog) if keylog else None,
             sip_frames=counters["tshark-sip-frames"], seconds=round(summary.seconds, 3))
    return summary
