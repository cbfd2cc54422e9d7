"""The compiled fast path (capture/_fastpath.c) against the Python path it stands in for (issue 4).

Both must give the same spools, so the same vCons: every capture here is ingested twice, once with
the compiled module and once without, and the results compared whole.
"""

from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import capture.engine as engine_module
from capture.engine import CaptureEngine, StreamRoute
from capture.ingest import IngestOptions, ingest_file
from capture.pcapio import PcapWriter
from capture.spool import StreamSpool
from tests.conftest import CORPUS_PCAP
from tests.test_ingest_edges import _frame

ROOT = Path(__file__).resolve().parents[2]
fastpath = getattr(engine_module, "_fastpath")  # noqa: B009 - a private module attribute


def test_ci_builds_the_compiled_module() -> None:
    """CI installs with a compiler, so the compiled path is the one its tests exercise."""
    if os.environ.get("CI") and not os.environ.get("VCON_CAPTURE_PURE_PYTHON"):
        assert fastpath is not None
    else:
        pytest.skip("only checked in CI")


needs_module = pytest.mark.skipif(fastpath is None, reason="capture._fastpath is not built")


class _Counting:
    """The compiled module, counting the records it consumed (so a test knows it really ran)."""

    def __init__(self) -> None:
        self.records = 0

    def scan_pcap(self, *args: Any) -> Any:
        result = fastpath.scan_pcap(*args)
        self.records += result[1]
        return result


def _ingest(path: Path, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], Any]:
    counting = _Counting()
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "_fastpath", counting if compiled else None)
        out: list[dict[str, Any]] = []
        summary = ingest_file(path, out.append, IngestOptions(workers=0, progress=False))
    if compiled:
        assert counting.records > 0
    for vcon in out:
        vcon.pop("created_at")
    return out, summary


def _same_both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    compiled, summary_c = _ingest(path, True, monkeypatch)
    python, summary_p = _ingest(path, False, monkeypatch)
    assert compiled == python
    assert (summary_c.packets, summary_c.calls, summary_c.skipped_by_reason) == (
        summary_p.packets, summary_p.calls, summary_p.skipped_by_reason)
    return compiled


@needs_module
def test_bundled_sample_gives_the_same_vcons(monkeypatch: pytest.MonkeyPatch) -> None:
    vcons = _same_both_ways(ROOT / "pcaps" / "sipp-calls.pcap", monkeypatch)
    assert any(d["type"] == "recording" for v in vcons for d in v["dialog"])


@needs_module
@pytest.mark.parametrize("name", ["SIP_CALL_RTP_G711.pcap", "sip-rtp-g722.pcap", "MagicJack_short_call.pcap",
                                  "voipshark_SIP-RTP-Normal_Call_two_parties.pcap",
                                  "register-invite-reinvite-bye.pcap"])
def test_corpus_captures_give_the_same_vcons(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not CORPUS_PCAP.is_dir():
        pytest.skip("../shared/corpus is not beside the checkout")
    _same_both_ways(CORPUS_PCAP / name, monkeypatch)


def _call(path: Path, *, big_endian: bool, nanosecond: bool) -> None:
    from tests.test_ingest_edges import _sdp, _sip

    a, b = ("192.0.2.1", 5060), ("192.0.2.2", 5060)
    ma, mb = ("192.0.2.1", 4000), ("192.0.2.2", 6000)
    t0 = 1_700_000_000.123456
    with open(path, "wb") as fh:
        w = PcapWriter(fh, big_endian=big_endian, nanosecond=nanosecond)
        w.write(t0, _frame(a, b, _sip("INVITE sip:x@example.com SIP/2.0", "1 INVITE", body=_sdp(ma[0], ma[1]))))
        w.write(t0 + 0.5, _frame(b, a, _sip("SIP/2.0 200 OK", "1 INVITE", to_tag=";tag=b1",
                                            body=_sdp(mb[0], mb[1]))))
        for i in range(300):
            t = t0 + 0.52 + i * 0.02
            for k, (src, dst) in enumerate(((ma, mb), (mb, ma))):
                rtp = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x100 + k) + bytes([0x55 + 0x20 * k]) * 160
                w.write(t + k * 0.0001, _frame(src, dst, rtp))
            if i == 100:  # an odd datagram in the middle: the Python path takes it, then the fast one again
                w.write(t + 0.001, _frame(("192.0.2.9", 9), ("192.0.2.2", 6000), b"\x00" * 20))
        w.write(t0 + 7, _frame(a, b, _sip("BYE sip:x@example.com SIP/2.0", "2 BYE", to_tag=";tag=b1")))


@needs_module
@pytest.mark.parametrize(("big_endian", "nanosecond"), [(False, False), (True, False), (False, True), (True, True)])
def test_byte_orders_and_resolutions(tmp_path: Path, big_endian: bool, nanosecond: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cap = tmp_path / "call.pcap"
    _call(cap, big_endian=big_endian, nanosecond=nanosecond)
    (vcon,) = _same_both_ways(cap, monkeypatch)
    assert vcon["dialog"][0]["type"] == "recording"


def _pcap_records(frames: list[tuple[float, bytes]]) -> bytes:
    fh = io.BytesIO()
    w = PcapWriter(fh)
    for ts, frame in frames:
        w.write(ts, frame)
    return fh.getvalue()[24:]


KEY = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 4000, 6000)
RTP = struct.pack("!BBHII", 0x80, 0, 1, 160, 7) + bytes(160)


@needs_module
def test_scan_appends_what_streamspool_add_would(tmp_path: Path) -> None:
    frames = [(10.0 + i * 0.02, _frame(("192.0.2.1", 4000), ("192.0.2.2", 6000), RTP)) for i in range(5)]
    buf = _pcap_records(frames)
    spool = StreamSpool(tmp_path, "c")
    pos, count, last, full = fastpath.scan_pcap(buf, 0, False, 1e-6, {KEY: spool.sink}, math.inf, 1 << 20)
    assert (pos, count, full) == (len(buf), 5, None)
    expected = StreamSpool(tmp_path, "p")
    for ts, _ in frames:
        expected.add(ts, RTP)
    assert bytes(spool.sink[0]) == bytes(expected.sink[0])
    assert (spool.packets, spool.last) == (5, expected.last) and last == expected.last


@needs_module
def test_scan_stops_where_python_must_take_over(tmp_path: Path) -> None:
    rtp = _frame(("192.0.2.1", 4000), ("192.0.2.2", 6000), RTP)
    other = _frame(("192.0.2.1", 4001), ("192.0.2.2", 6000), RTP)  # not a known stream
    buf = _pcap_records([(1.0, rtp), (1.02, other), (1.04, rtp), (5.0, rtp)])
    spool = StreamSpool(tmp_path, "s")
    sinks = {KEY: spool.sink}
    record = 16 + len(rtp)
    assert fastpath.scan_pcap(buf, 0, False, 1e-6, sinks, math.inf, 1 << 20)[:2] == (record, 1)
    # A timer due at 5.0: the record at 5.0 goes through Python, which runs the timer first.
    assert fastpath.scan_pcap(buf, 2 * record, False, 1e-6, sinks, 5.0, 1 << 20)[:2] == (3 * record, 1)
    # A record cut short by the end of the buffer is left for the reader to refill.
    assert fastpath.scan_pcap(buf[:-10], 3 * record, False, 1e-6, sinks, math.inf, 1 << 20)[:2] == (3 * record, 0)
    # A buffer past the limit is handed back for spilling.
    full = fastpath.scan_pcap(buf, 3 * record, False, 1e-6, sinks, math.inf, 100)[3]
    assert full is spool.sink
    assert spool.packets == 3


@needs_module
def test_scan_rejects_a_malformed_sink() -> None:
    buf = _pcap_records([(1.0, _frame(("192.0.2.1", 4000), ("192.0.2.2", 6000), RTP))])
    with pytest.raises(TypeError):
        fastpath.scan_pcap(buf, 0, False, 1e-6, {KEY: ["not a bytearray", 0, 0.0]}, math.inf, 1 << 20)


# -- differential property: the compiled scan consumes exactly what handle_frame would take --------

_KNOWN = [(("192.0.2.1", 4000), ("192.0.2.2", 6000)), (("192.0.2.2", 6000), ("192.0.2.1", 4000))]


@st.composite
def _records(draw: st.DrawFn) -> tuple[float, bytes]:
    kind = draw(st.sampled_from(["known", "known", "known", "unknown", "mangled", "random", "short"]))
    ts = draw(st.floats(1_700_000_000, 1_700_000_100, allow_nan=False))
    payload = draw(st.binary(min_size=0, max_size=200))
    if kind == "random":
        return ts, draw(st.binary(min_size=0, max_size=120))
    if kind == "short":
        return ts, _frame(*_KNOWN[0], payload)[: draw(st.integers(0, 45))]
    src, dst = _KNOWN[draw(st.integers(0, 1))] if kind != "unknown" else (("192.0.2.7", 1234), ("192.0.2.2", 6000))
    frame = bytearray(_frame(src, dst, payload))
    if kind == "mangled":  # one byte the fast path looks at, changed
        index = draw(st.sampled_from([12, 13, 14, 20, 21, 23, 38, 39]))
        frame[index] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame += draw(st.binary(max_size=8))  # Ethernet padding after the UDP datagram
    return ts, bytes(frame)


def _python_scan(engine: CaptureEngine, buf: bytes, big_endian: bool, scale: float) -> tuple[int, int]:
    unpack = struct.Struct((">" if big_endian else "<") + "IIII").unpack_from
    pos = count = 0
    while pos + 16 <= len(buf):
        sec, frac, caplen, _ = unpack(buf, pos)
        if caplen > 256 * 1024 or pos + 16 + caplen > len(buf):
            break
        if not engine.handle_frame(sec + frac * scale, 1, buf[pos + 16 : pos + 16 + caplen]):
            break
        pos += 16 + caplen
        count += 1
    return pos, count


def _engine_with_routes(tmp: Path) -> tuple[CaptureEngine, list[StreamSpool]]:
    engine = CaptureEngine(tmp)
    spools = []
    for index, (src, dst) in enumerate(_KNOWN):
        spool = StreamSpool(tmp, f"s{index}")
        route = StreamRoute(key=(src[0], src[1], dst[0], dst[1]), call=None, channel=index, spool=spool)  # type: ignore[arg-type]
        raw = bytes(int(x) for x in src[0].split(".")) + bytes(int(x) for x in dst[0].split(".")) + struct.pack(
            "!HH", src[1], dst[1])
        engine.raw_routes[raw] = route
        engine.raw_sinks[raw] = spool.sink
        spools.append(spool)
    return engine, spools


@needs_module
@settings(max_examples=300, deadline=None)
@given(records=st.lists(_records(), max_size=30), big_endian=st.booleans(), nanosecond=st.booleans(),
       deadline=st.one_of(st.none(), st.floats(1_700_000_000, 1_700_000_100)), cut=st.integers(0, 40))
def test_compiled_scan_equals_handle_frame(tmp_path_factory: pytest.TempPathFactory, records: list[tuple[float, bytes]],
                                           big_endian: bool, nanosecond: bool, deadline: float | None,
                                           cut: int) -> None:
    fh = io.BytesIO()
    writer = PcapWriter(fh, big_endian=big_endian, nanosecond=nanosecond)
    for ts, frame in records:
        writer.write(ts, frame)
    buf = fh.getvalue()[24:]
    buf = buf[: max(len(buf) - cut, 0)]  # a last record cut short, sometimes
    scale = 1e-9 if nanosecond else 1e-6
    tmp = tmp_path_factory.mktemp("scan")
    python_engine, python_spools = _engine_with_routes(tmp / "p")
    compiled_engine, compiled_spools = _engine_with_routes(tmp / "c")
    python_engine._next_deadline = compiled_engine._next_deadline = deadline
    expected = _python_scan(python_engine, buf, big_endian, scale)
    pos, count, _, full = fastpath.scan_pcap(buf, 0, big_endian, scale, compiled_engine.raw_sinks,
                                             math.inf if deadline is None else deadline, 1 << 30)
    assert (pos, count) == expected and full is None
    for ours, theirs in zip(compiled_spools, python_spools, strict=True):
        assert bytes(ours.sink[0]) == bytes(theirs.sink[0])
        assert (ours.packets, ours.last) == (theirs.packets, theirs.last)


@needs_module
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), pos=st.integers(-5, 2100))
def test_compiled_scan_survives_any_bytes(data: bytes, pos: int) -> None:
    spool_sink: list[Any] = [bytearray(), 0, 0.0, None]
    sinks = {data[i : i + 12]: spool_sink for i in range(0, min(len(data), 600), 37) if len(data[i : i + 12]) == 12}
    end, count, _, _ = fastpath.scan_pcap(data, pos, False, 1e-6, sinks, math.inf, 1 << 20)
    assert count >= 0 and (count == 0 or end <= len(data))
    assert spool_sink[1] <= count
