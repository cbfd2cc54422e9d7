"""Ingest edge cases on synthetic captures: NAT'd media (inferred match), progress bar (issue 2)."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import pytest

from capture.ingest import IngestOptions, ingest_file
from capture.pcapio import PcapWriter
from tests.vcon_checks import validate_vcon


def _frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    def ip(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))

    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, ip(src[0]), ip(dst[0]))
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + hdr + udp


def _sip(start: str, cseq: str, *, to_tag: str = "", body: str = "") -> bytes:
    text = (f"{start}\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK{cseq[0]}{to_tag}\r\n"
            f"From: <sip:+15550001111@example.com>;tag=a1\r\nTo: <sip:+15550002222@example.com>{to_tag}\r\n"
            f"Call-ID: nat-call\r\nCSeq: {cseq}\r\n")
    if body:
        text += "Content-Type: application/sdp\r\n"
    return (text + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def _sdp(addr: str, port: int) -> str:
    return f"v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"


def _nat_capture(path: Path, seconds: float = 3.0) -> None:
    """The caller sits behind NAT: its SDP says 10.0.0.5:4000, its packets come from 203.0.113.9."""
    caller_sig, callee_sig = ("203.0.113.9", 5060), ("198.51.100.20", 5060)
    caller_media_seen = ("203.0.113.9", 4000)   # the SDP port at the SIP peer's public address
    callee_media = ("198.51.100.20", 6000)
    t0 = 1_700_000_000.0
    with open(path, "wb") as fh:
        w = PcapWriter(fh)
        w.write(t0, _frame(caller_sig, callee_sig, _sip("INVITE sip:x@example.com SIP/2.0", "1 INVITE",
                                                         body=_sdp("10.0.0.5", 4000))))
        w.write(t0 + 0.5, _frame(callee_sig, caller_sig, _sip("SIP/2.0 200 OK", "1 INVITE", to_tag=";tag=b1",
                                                               body=_sdp("198.51.100.20", 6000))))
        w.write(t0 + 0.51, _frame(caller_sig, callee_sig, _sip("ACK sip:x@example.com SIP/2.0", "1 ACK",
                                                                to_tag=";tag=b1")))
        n = int(seconds / 0.02)
        for i in range(n):
            t = t0 + 0.52 + i * 0.02
            for k, (src, dst) in enumerate(((caller_media_seen, callee_media), (callee_media, caller_media_seen))):
                rtp = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x100 + k) + bytes([0x55 + 0x20 * k]) * 160
                w.write(t, _frame(src, dst, rtp))
        end = t0 + 0.52 + n * 0.02
        w.write(end, _frame(caller_sig, callee_sig, _sip("BYE sip:x@example.com SIP/2.0", "2 BYE", to_tag=";tag=b1")))


def test_nat_media_is_matched_and_marked_inferred(tmp_path: Path) -> None:
    cap = tmp_path / "nat.pcap"
    _nat_capture(cap)
    vcons: list[dict[str, Any]] = []
    summary = ingest_file(cap, vcons.append, IngestOptions(workers=0))
    assert summary.calls == 1 and len(vcons) == 1
    vcon = vcons[0]
    validate_vcon(vcon)
    quality = next(a for a in vcon["analysis"] if a.get("schema") == "vcon-capture-rtp-quality")
    channels = sorted((s["channel"], s["packets"]) for s in quality["body"]["streams"])
    assert channels == [(0, 150), (1, 150)]
    notes = next(a for a in vcon["analysis"] if a.get("schema") == "vcon-capture-notes")["body"]
    assert notes["legs"]["nat-call"]["media_match"] == "inferred"


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    cap = tmp_path / "nat.pcap"
    _nat_capture(cap, seconds=60.0)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    ingest_file(cap, lambda v: None, IngestOptions(workers=0, progress=True), stderr=err)
    text = err.getvalue()
    assert "nat.pcap [" in text and "%" in text
    assert text.endswith("\r\x1b[K")  # the bar is erased at the end


def test_spliced_json_equals_json_dumps() -> None:
    import json

    from capture.ingest import dumps_vcon

    body = "A-_z09" * 5000
    vcon = {"vcon": "0.4.0", "uuid": "u", "dialog": [
        {"type": "recording", "encoding": "base64url", "body": body, "mediatype": "audio/x-wav"},
        {"type": "text", "encoding": "none", "body": "short é"},
        {"type": "recording", "encoding": "base64url", "body": body[::-1]},
    ], "parties": [{"name": "Zoë"}]}
    assert dumps_vcon(vcon) == json.dumps(vcon, ensure_ascii=False, separators=(",", ":")).encode()
    assert vcon["dialog"][0]["body"] == body  # the input is not modified


def _tcp_frame(src: tuple[str, int], dst: tuple[str, int], seq: int, flags: int, payload: bytes) -> bytes:
    def ip(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))

    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, ip(src[0]), ip(dst[0]))
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + hdr + tcp


def test_sip_over_tls_is_counted_and_said(tmp_path: Path) -> None:
    cap = tmp_path / "tls.pcap"
    client, server = ("192.0.2.1", 40000), ("192.0.2.2", 5061)
    hello = b"\x16\x03\x01\x00\x50" + bytes(80)  # a TLS handshake record
    with open(cap, "wb") as fh:
        w = PcapWriter(fh)
        w.write(1.0, _tcp_frame(client, server, 1000, 0x02, b""))
        w.write(1.1, _tcp_frame(client, server, 1001, 0x18, hello))
        w.write(1.2, _tcp_frame(client, server, 1001 + len(hello), 0x18, b"\x17\x03\x03\x00\x10" + bytes(16)))
    summary = ingest_file(cap, lambda v: None, IngestOptions(workers=0))
    assert summary.tls_flows == 1 and summary.calls == 0
    assert "1 SIP-over-TLS flows unreadable" in summary.line()


def test_long_recording_is_streamed_into_the_vcon_file(tmp_path: Path) -> None:
    import json
    import tracemalloc

    from bench.ingest import make_long_call
    from conversation.vcon import b64url_decode

    cap = tmp_path / "long.pcap"
    make_long_call(cap, 600)  # 10 minutes: a 19 MB stereo WAV, 26 MB of base64url
    out = tmp_path / "out"
    tracemalloc.start()
    summary = ingest_file(cap, lambda v: None, IngestOptions(workers=0, write_dir=out, fsync=False))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert summary.vcons == 1
    (path,) = out.glob("*.vcon.json")
    vcon = json.loads(path.read_text())
    validate_vcon(vcon)
    d = vcon["dialog"][0]
    wav = b64url_decode(d["body"])
    assert len(wav) == 44 + d["duration"] * 8000 * 4
    assert peak < 12 * 1024 * 1024  # far below the recording's size: it was never held whole
    # The same call handed to a handler (no streaming) gives the same body.
    vcons: list[dict[str, Any]] = []
    ingest_file(cap, vcons.append, IngestOptions(workers=0))
    assert vcons[0]["dialog"][0]["body"] == d["body"]


def test_worker_processes_write_the_same_vcons_as_inline(tmp_path: Path) -> None:
    """Workers get the spools through the shared-memory hand-off and encode the recording straight
    into the file: the vCons must be the ones the inline path writes."""
    import json
    import os

    cap = tmp_path / "nat.pcap"
    _nat_capture(cap, seconds=4.0)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    written = {}
    for workers in (0, 1):
        out = tmp_path / f"out{workers}"
        # The worker run writes durably: batches of calls, each batch fsynced before its reply.
        summary = ingest_file(cap, lambda v: None, IngestOptions(workers=workers, write_dir=out, fsync=workers > 0))
        assert summary.vcons == 1
        (path,) = out.glob("*.vcon.json")
        vcon = json.loads(path.read_text())
        validate_vcon(vcon)
        vcon.pop("created_at")
        written[workers] = vcon
    assert written[0] == written[1]
    assert written[1]["dialog"][0]["body"]
    if shm_before:
        assert not {n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("vcon-capture")}


@pytest.mark.parametrize("simd", [True, False])
def test_b64url_bytes_is_unpadded_urlsafe_base64(simd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import os

    from conversation import vcon as module

    if not simd:  # the standard-library path, used where pybase64 is missing
        monkeypatch.setattr(module, "_pybase64", None)
    for size in [*range(9), 1000, 4097]:
        data = os.urandom(size)
        expected = base64.urlsafe_b64encode(data).rstrip(b"=")
        assert module.b64url_bytes(data) == expected
        assert module.b64url(data) == expected.decode()


def test_inline_ingest_makes_a_batch_durable_with_one_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline too, calls are completed 8 at a time and each batch's files are synced together
    (one file-system sync, one directory fsync), not one fsync per file."""
    import os
    import stat

    import delivery.atomic

    synced: list[str] = []
    real_sync, real_dir = delivery.atomic.sync_files, delivery.atomic.fsync_dir
    monkeypatch.setattr(delivery.atomic, "sync_files",
                        lambda d, paths: (synced.append(f"files:{len(list(paths))}"), real_sync(d, []))[1])
    monkeypatch.setattr(delivery.atomic, "fsync_dir", lambda d: (synced.append("dir"), real_dir(d))[1])
    real_fsync = delivery.atomic.os.fsync

    def fsync(fd: int) -> None:
        assert stat.S_ISDIR(os.fstat(fd).st_mode), "an fsync per file"
        real_fsync(fd)

    monkeypatch.setattr(delivery.atomic.os, "fsync", fsync)
    out = tmp_path / "out"
    sample = Path(__file__).resolve().parents[1] / "pcaps" / "sipp-calls.pcap"
    summary = ingest_file(sample, lambda v: None, IngestOptions(workers=0, write_dir=out, fsync=True))
    assert summary.vcons == 3
    assert synced == ["files:3", "dir"]
    assert len(list(out.glob("*.vcon.json"))) == 3 and not list(out.glob(".*"))


def test_hand_off_memory_is_freed_even_when_a_cleanup_step_fails(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from capture import handoff

    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    cap = tmp_path / "nat.pcap"
    _nat_capture(cap, seconds=2.0)

    def broken_close(self: handoff.HandOffArena) -> None:
        raise OSError("cannot unmap")

    monkeypatch.setattr(handoff.HandOffArena, "close", broken_close)
    with pytest.raises(OSError, match="cannot unmap"):
        ingest_file(cap, lambda v: None, IngestOptions(workers=1, write_dir=tmp_path / "out", fsync=False))
    assert not list(shm.glob(f"vcon-capture-handoff-{os.getpid()}-*"))


def test_hand_offs_of_killed_ingests_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess

    from capture.ingest import _hand_off_dir

    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = shm / f"vcon-capture-handoff-{gone.pid}-test"
    orphan.mkdir()
    (orphan / "arena").write_bytes(b"x" * 1000)
    ours = _hand_off_dir(tmp_path)
    try:
        assert not orphan.exists()
        assert ours.parent == shm and ours.name.startswith(f"vcon-capture-handoff-{os.getpid()}-")
        _hand_off_dir(tmp_path).rmdir()
        assert ours.exists()  # a live process's hand-off is left alone
    finally:
        ours.rmdir()
