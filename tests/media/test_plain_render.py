"""The compiled one-pass render of plain G.711 calls (capture/_spoolrender.c, issue 4) against the
general path it stands in for: the same WAV bytes, reports and statistics, or it declines."""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture import plain_render, render, render_place
from capture.ingest import IngestOptions, ingest_file
from capture.recorder import CodecSpec, StreamSpool, render_recording
from capture.spool import SpoolInfo
from tests.conftest import CORPUS_PCAP
from tests.media.test_render_paths import spool as spool_of_records

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
CODECS = {0: CodecSpec("PCMU", 8000), 8: CodecSpec("PCMA", 8000), 13: CodecSpec("CN", 8000),
          101: CodecSpec("telephone-event", 8000), 96: CodecSpec("opus", 48000, 2)}

needs_module = pytest.mark.skipif(not plain_render.AVAILABLE, reason="capture._spoolrender is not built")


def test_ci_builds_the_compiled_module() -> None:
    if os.environ.get("CI") and not os.environ.get("VCON_CAPTURE_PURE_PYTHON"):
        assert plain_render.AVAILABLE
    else:
        pytest.skip("only checked in CI")


def _rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def _event(digit: int, end: bool, duration: int) -> bytes:
    return struct.pack("!BBH", digit, (0x80 if end else 0) | 10, duration)


@st.composite
def plain_streams(draw: st.DrawFn) -> list[tuple[float, bytes]]:
    """One direction of a call the plain path takes (mostly): G.711 with gaps, jitter, clock jumps,
    DTMF on the same or another SSRC (final packets repeated), comfort noise and RTCP."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(0, 300))
    pt = draw(st.sampled_from([0, 8]))
    seq, ts, ssrc = int(rng.integers(0, 65536)), int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))
    size = draw(st.sampled_from([80, 160, 240]))
    out: list[tuple[float, bytes]] = []
    arrival = T0 + float(rng.uniform(-0.5, 0.5))
    dtmf_ssrc = ssrc if draw(st.booleans()) else ssrc ^ 0x5A5A
    dtmf_seq = seq if dtmf_ssrc == ssrc else int(rng.integers(0, 65536))
    for _ in range(count):
        roll = rng.random()
        if roll < 0.03:  # a digit: three updates and a final packet sent three times
            event_ts = ts
            for step in range(6):
                end = step >= 3
                data = _rtp(101, dtmf_seq if dtmf_ssrc != ssrc else seq, event_ts, dtmf_ssrc,
                            _event(int(rng.integers(0, 17)), end, 160 * min(step + 1, 4)))
                out.append((arrival, data))
                arrival += 0.02
                if not end or step == 5:
                    if dtmf_ssrc == ssrc:
                        seq += 1
                    else:
                        dtmf_seq += 1
            ts += 160 * 6
            continue
        if roll < 0.05:
            out.append((arrival, _rtp(13, seq, ts, ssrc, b"\x40")))  # comfort noise
        elif roll < 0.06:
            out.append((arrival, bytes([0x81, 200]) + struct.pack("!H", 6) + bytes(24)))  # RTCP SR
        else:
            out.append((arrival, _rtp(pt, seq, ts, ssrc, rng.integers(0, 256, size, dtype=np.uint8).tobytes(),
                                      marker=rng.random() < 0.02)))
        seq += 1 if rng.random() < 0.97 else int(rng.integers(2, 40))  # loss
        ts += size if rng.random() < 0.99 else int(rng.integers(size, 40_000))  # a silence gap
        arrival += 0.02 + float(rng.uniform(0, 0.004)) + (float(rng.uniform(1.5, 3)) if rng.random() < 0.005 else 0)
    return out


def _spool(directory: Path, name: str, records: list[tuple[float, bytes]]) -> SpoolInfo:
    return spool_of_records(directory, name, records).finish()  # the SDP map has PCMU, PCMA, CN, events


PLAIN_RUNS: list[bool] = []


@pytest.fixture(autouse=True, scope="module")
def _plain_path_was_exercised() -> object:
    yield
    if plain_render.AVAILABLE and PLAIN_RUNS:  # the differential test ran (not deselected)
        assert sum(PLAIN_RUNS) >= 20, "the compiled path never rendered a call"


def _both_ways(channels: list[list[SpoolInfo]], start: float, end: float, directory: Path,
               in_memory: bool) -> tuple[Any, Any, bool]:
    plain = render._render_plain_call(channels, start, end, directory / "probe.wav", []) is not None
    PLAIN_RUNS.append(plain)
    compiled = render_recording(channels, start=start, end=end, out_path=directory / "c.wav", in_memory=in_memory)
    compiled_wav = compiled.wav if compiled.path is None else compiled.path.read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "_render_plain_call", lambda *args: None)
        general = render_recording(channels, start=start, end=end, out_path=directory / "g.wav", in_memory=in_memory)
    general_wav = general.wav if general.path is None else general.path.read_bytes()
    return (compiled, compiled_wav), (general, general_wav), plain


@needs_module
@settings(max_examples=150, deadline=None)
@given(first=plain_streams(), second=plain_streams(), extra=st.one_of(st.none(), plain_streams()),
       window=st.tuples(st.floats(-1.0, 2.0), st.floats(0.0, 8.0)), in_memory=st.booleans(),
       chunk=st.sampled_from([300, 4096, 1 << 18]), memory_limit=st.sampled_from([render.IN_MEMORY_BYTES, 4096]))
def test_plain_render_equals_the_general_path(first: list[tuple[float, bytes]], second: list[tuple[float, bytes]],
                                              extra: list[tuple[float, bytes]] | None, window: tuple[float, float],
                                              in_memory: bool, chunk: int, memory_limit: int) -> None:
    """Spools in files read in chunks that tear records; recordings in memory or (a low memory limit)
    in per-channel files interleaved at the end, as long calls are."""
    with tempfile.TemporaryDirectory() as name, pytest.MonkeyPatch.context() as limits:
        limits.setattr(plain_render, "READ_CHUNK", chunk)
        limits.setattr(render, "IN_MEMORY_BYTES", memory_limit)
        directory = Path(name)
        channels = [[_spool(directory, "a", first)], [_spool(directory, "b", second)]]
        if extra is not None:  # a second spool on one channel (a re-INVITE moved the media)
            later = [(arrival + 3.0, data) for arrival, data in extra]
            channels[0].append(_spool(directory, "c", later))
        start, end = T0 + window[0], T0 + window[0] + window[1]
        (compiled, compiled_wav), (general, general_wav), _ = _both_ways(channels, start, end, directory, in_memory)
        assert compiled == general or (compiled.path is not None and _without_path(compiled) == _without_path(general))
        assert compiled_wav == general_wav


def _without_path(result: Any) -> Any:
    import dataclasses
    return dataclasses.replace(result, path=None)


def _declines(records: list[tuple[float, bytes]], codecs: dict[int, CodecSpec] = CODECS) -> bool:
    with tempfile.TemporaryDirectory() as name:
        stream = StreamSpool(Path(name), "x")
        stream.set_codecs(0.0, codecs)
        for arrival, data in records:
            stream.add(arrival, data)
        block = np.zeros(80_000, dtype=np.int16)
        return plain_render.render_plain([[stream.finish()]], [render_place.MemoryChannel(block)], T0, T0 + 10,
                                         80_000) is None


def _audio(count: int, **change: Any) -> list[tuple[float, bytes]]:
    return [(T0 + 0.02 * i, _rtp(change.get("pt", 0), 100 + i, 1000 + 160 * i, 7, bytes(160))) for i in range(count)]


@needs_module
def test_plain_path_takes_an_ordinary_stream() -> None:
    assert not _declines(_audio(50))


@needs_module
@pytest.mark.parametrize("case", ["padding", "csrc", "extension", "reordered", "duplicate audio", "unknown pt",
                                  "opus", "two audio codecs", "many ssrcs", "overlap", "not rtp", "restart"])
def test_plain_path_declines_what_it_does_not_do_exactly(case: str) -> None:
    records = _audio(20)
    arrival, data = records[10]
    if case == "padding":
        records[10] = (arrival, bytes([0xA0]) + data[1:] + b"\x00\x02")
    elif case == "csrc":
        records[10] = (arrival, bytes([0x81]) + data[1:12] + b"\x00\x00\x00\x01" + data[12:])
    elif case == "extension":
        records[10] = (arrival, bytes([0x90]) + data[1:12] + b"\xbe\xde\x00\x00" + data[12:])
    elif case == "reordered":
        records[10], records[11] = (arrival, records[11][1]), (records[11][0], data)
    elif case == "duplicate audio":
        records.insert(11, (arrival + 0.001, data))
    elif case == "unknown pt":
        records[10] = (arrival, _rtp(99, 110, 1000 + 1600, 7, bytes(160)))
    elif case == "opus":
        records[10] = (arrival, _rtp(96, 110, 1000 + 1600, 7, bytes(60)))
    elif case == "two audio codecs":
        records[10] = (arrival, _rtp(8, 110, 1000 + 1600, 7, bytes(160)))
    elif case == "many ssrcs":
        records += [(T0 + 1 + i * 0.02, _rtp(0, i, i * 160, 100 + i, bytes(160))) for i in range(9)]
    elif case == "overlap":
        records[10] = (arrival, _rtp(0, 110, 1000 + 1600 - 80, 7, bytes(160)))
    elif case == "not rtp":
        records[10] = (arrival, b"\x00" * 30)
    elif case == "restart":
        records[10] = (arrival, _rtp(0, 9000, 1000 + 1600, 7, bytes(160)))
    assert _declines(records)


@needs_module
def test_plain_path_declines_clocks_no_capture_gives() -> None:
    """A NaN arrival, or a window so wide that sample offsets leave int64, goes to the general path
    (Python's integers), never into undefined C conversions."""
    records = _audio(20)
    records[5] = (math.nan, records[5][1])
    assert _declines(records)
    with tempfile.TemporaryDirectory() as name:
        stream = StreamSpool(Path(name), "x")
        stream.set_codecs(0.0, CODECS)
        for arrival, data in _audio(20):
            stream.add(arrival, data)
        block = np.zeros(100, dtype=np.int16)
        assert plain_render.render_plain([[stream.finish()]], [render_place.MemoryChannel(block)], -1e300, 1e300,
                                         100) is None


@needs_module
def test_jitter_filter_is_the_per_packet_recursion() -> None:
    rng = np.random.default_rng(7)
    changes = rng.exponential(0.002, 1000)
    jitter = top = 0.0015
    for change in changes.tolist():
        jitter += (change - jitter) / 16
        top = max(top, jitter)
    assert plain_render.jitter_filter(changes, 0.0015) == (jitter, top)


class _CountingRender:
    def __init__(self) -> None:
        self.rendered = self.declined = 0
        self.real = plain_render.render_plain

    def __call__(self, *args: Any) -> Any:
        result = self.real(*args)
        if result is None:
            self.declined += 1
        else:
            self.rendered += 1
        return result


def _ingest(path: Path, plain: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], _CountingRender]:
    counting = _CountingRender()
    with monkeypatch.context() as patch:
        patch.setattr(render, "render_plain", counting if plain else lambda *args: None)
        out: list[dict[str, Any]] = []
        ingest_file(path, out.append, IngestOptions(workers=0, progress=False))
    for vcon in out:
        vcon.pop("created_at")
    return out, counting


@needs_module
def test_bundled_sample_renders_the_compiled_way_with_the_same_vcons(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, counting = _ingest(ROOT / "pcaps" / "sipp-calls.pcap", True, monkeypatch)
    general, _ = _ingest(ROOT / "pcaps" / "sipp-calls.pcap", False, monkeypatch)
    assert compiled == general
    assert counting.rendered >= 1 and counting.declined == 0


CORPUS_CAPTURES = sorted(path.name for path in CORPUS_PCAP.glob("*.*cap*")) if CORPUS_PCAP.is_dir() else []


@needs_module
@pytest.mark.skipif(not CORPUS_CAPTURES, reason="../shared/corpus is not beside the checkout")
@pytest.mark.parametrize("name", CORPUS_CAPTURES)
def test_corpus_captures_give_the_same_vcons(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: the same capture gives the same vCons twice in one process (decoders keep no state
    between calls; sip-rtp-opus-hybrid.pcap caught FFmpeg's own Opus decoder not doing so)."""
    compiled, _ = _ingest(CORPUS_PCAP / name, True, monkeypatch)
    general, _ = _ingest(CORPUS_PCAP / name, False, monkeypatch)
    assert compiled == general


def test_quality_report_values_are_plain_json() -> None:
    """Each stream's statistics go into the vCon's quality report as JSON values: floats to six
    decimals (also numpy's), tuples as lists, every field."""
    import dataclasses

    from capture.complete import _stats_item
    from capture.rtpstats import StreamStats

    stats = StreamStats(stream_id="s", ssrc=7, payload_types=(0, 101), codec="PCMU/8000", packets=10, expected=11,
                        lost=1, duplicates=0, reordered=0, jitter_ms=1.23456789, max_jitter_ms=np.float64(2.0000004),
                        max_delta_ms=20.0, first_arrival=1_700_000_000.1234567, last_arrival=1_700_000_001.5,
                        r_factor=None, mos=4.4)
    item = _stats_item(stats)
    assert list(item) == [field.name for field in dataclasses.fields(StreamStats)]
    assert item["payload_types"] == [0, 101] and item["jitter_ms"] == 1.234568 and item["max_jitter_ms"] == 2.0
    assert item["first_arrival"] == 1_700_000_000.123457 and item["r_factor"] is None
    assert json.loads(json.dumps(item)) == item


@st.composite
def _hostile_spools(draw: st.DrawFn) -> bytes:
    """Spool bytes: well-framed records of random or RTP-looking datagrams, or any bytes at all."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    out = bytearray()
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.booleans()):
            datagram = draw(st.binary(max_size=60))
        else:
            datagram = _rtp(draw(st.sampled_from([0, 8, 13, 101, 99])), draw(st.integers(0, 65535)),
                            draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 3)), draw(st.binary(max_size=200)))
        arrival = draw(st.floats(T0 - 5, T0 + 20, allow_nan=False))
        out += struct.pack("<dI", arrival, len(datagram)) + datagram
    return bytes(out[: len(out) - draw(st.integers(0, 5))])  # sometimes a torn last record


@needs_module
@settings(max_examples=400, deadline=None)
@given(spool=_hostile_spools(), frames=st.integers(0, 4000), window=st.floats(-2.0, 10.0),
       bridge=st.booleans())
def test_compiled_render_survives_any_spool_bytes(spool: bytes, frames: int, window: float, bridge: bool) -> None:
    """Whatever a spool holds, the C pass declines or answers within its buffers: every run lies in the
    scratch and the timeline, and it never consumes more than it was given."""
    from capture import _spoolrender  # type: ignore[attr-defined]

    kinds = bytearray(128)
    kinds[0], kinds[8], kinds[13], kinds[101] = 1, 2, 3, 4
    scratch = np.zeros(2 * len(spool), dtype=np.int16)
    state = bytearray(_spoolrender.STATE_SIZE)
    found = _spoolrender.render_g711(state, spool, bytes(kinds), plain_render._ULAW, plain_render._ALAW,
                                     T0 + window, T0 + window + 1.5, frames, scratch, bridge)
    if found is None:
        return
    consumed, runs, events = found
    assert 0 <= consumed <= len(spool)
    for frame, begin, length in runs:
        assert 0 <= frame and frame + length <= frames and 0 <= begin and begin + length <= len(scratch)
    assert all(len(event) == 5 for event in events)
    counts = _spoolrender.plain_result(state)
    assert counts[0] >= counts[1] and len(counts) == 7
