"""The array paths of the renderer give exactly what the per-packet paths give."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture import plain_render, render, render_place
from capture.recorder import CodecSpec, StreamSpool, render_recording
from capture.rtp import RtpPacket
from capture.rtpstats import SpecTable, StatsTracker

T0 = 1_700_000_000.0
CODECS = {0: CodecSpec("PCMU", 8000), 8: CodecSpec("PCMA", 8000), 13: CodecSpec("CN", 8000),
          101: CodecSpec("telephone-event", 8000)}


def datagrams(seed: int, count: int, chaos: float = 1.0) -> list[tuple[float, bytes]]:
    """Reordering, duplicates, loss and wraps; with `chaos`, also timestamp jumps, sequence restarts, SSRC
    changes, odd payload sizes and garbage (which make packets overlap: the generic path's case)."""
    rng = np.random.default_rng(seed)
    seq, ts, ssrc = int(rng.integers(0, 65536)), int(rng.integers(0, 2**32)), 1
    out = []
    for i in range(count):
        roll = rng.random() / max(chaos, 1e-9)
        if roll < 0.02:
            seq = int(rng.integers(0, 65536))  # numbering restart
        elif roll < 0.03:
            ts += int(rng.integers(-50_000, 50_000))  # timestamp jump (re-anchors when large)
        elif roll < 0.035:
            ssrc += 1
        size = 160 if rng.random() >= 0.1 * chaos else int(rng.integers(1, 240))
        pt = int(rng.choice([0, 0, 0, 0, 8, 13, 101, 96]))
        payload = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        data = bytes(RtpPacket(payload_type=pt, sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF,
                               ssrc=ssrc, payload=payload, marker=bool(rng.random() < 0.05)))
        if rng.random() < 0.01 * chaos:
            data = data[: int(rng.integers(0, 12))]  # truncated garbage
        arrival = T0 + 0.02 * i + float(rng.uniform(0, 0.1 if rng.random() < 0.2 else 0.002))
        out.append((arrival, data))
        if rng.random() < 0.05:
            out.append((arrival + 0.001, data))  # duplicate
        seq += 1 if rng.random() < 0.95 else int(rng.integers(2, 5))
        ts += 160
    out.sort(key=lambda item: item[0])
    return out


def spool(directory: Path, name: str, records: list[tuple[float, bytes]]) -> StreamSpool:
    stream = StreamSpool(directory, name, buffer_limit=2048)
    stream.set_codecs(0.0, CODECS)
    for arrival, data in records:
        stream.add(arrival, data)
    return stream


FAST_RUNS: list[bool] = []


@pytest.fixture(autouse=True, scope="module")
def _fast_path_was_exercised() -> object:
    yield
    assert sum(FAST_RUNS) >= 10, "the array placement path never ran to the end"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 400), window=st.floats(0.0, 0.5),
       chaos=st.sampled_from([0.0, 0.0, 0.0, 0.1, 1.0]))
def test_fast_placement_matches_generic(seed: int, count: int, window: float, chaos: float) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        infos = [spool(directory, "a", datagrams(seed, count, chaos)).finish(),
                 spool(directory, "b", datagrams(seed + 1, count, chaos)).finish()]
        run = render_place._FastPlacer.run

        def counted(placer: render_place._FastPlacer) -> int:
            decoded = run(placer)
            FAST_RUNS.append(True)
            return decoded
        start, end = T0 + window, T0 + 0.02 * count * (1 - window / 2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(render, "_render_plain_call", lambda *args: None)  # the array paths, both runs
            patch.setattr(render_place._FastPlacer, "run", counted)
            fast = render_recording([infos[:1], infos[1:]], start=start, end=end,
                                    out_path=directory / "fast.wav")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(render, "_render_plain_call", lambda *args: None)
            patch.setattr(render_place, "_fast_g711", lambda spec: False)
            generic = render_recording([infos[:1], infos[1:]], start=start, end=end,
                                       out_path=directory / "generic.wav")
        assert fast.channel_reports == generic.channel_reports
        assert (fast.frames, fast.sample_rate) == (generic.frames, generic.sample_rate)
        if fast.path is not None and generic.path is not None:
            assert fast.path.read_bytes() == generic.path.read_bytes()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 600), split=st.integers(1, 600),
       chaos=st.sampled_from([0.0, 0.1, 1.0]))
def test_update_many_matches_update(seed: int, count: int, split: int, chaos: float) -> None:
    records = [(arrival, RtpPacket.parse(data)) for arrival, data in datagrams(seed, count, chaos)
               if len(data) >= 12]
    if not records:
        return
    table = SpecTable()
    numbers = [table.number(CODECS.get(packet.payload_type)) for _, packet in records]
    one = StatsTracker("s", 1, records[0][0])
    for (received, packet), number in zip(records, numbers, strict=True):
        one.update(received, packet.payload_type, packet.sequence_number, packet.timestamp, table.specs[number])
    many = StatsTracker("s", 1, records[0][0])
    columns = [np.array(values) for values in zip(
        *((received, p.payload_type, p.sequence_number, p.timestamp, n)
          for (received, p), n in zip(records, numbers, strict=True)), strict=True)]
    arrival, payload_type, sequence, timestamp, spec = (
        columns[0].astype(np.float64), *(column.astype(np.int64) for column in columns[1:])
    )
    for begin in range(0, len(records), split):  # batches, as spools are read
        stop = begin + split
        many.update_many(arrival[begin:stop], payload_type[begin:stop], sequence[begin:stop],
                         timestamp[begin:stop], spec[begin:stop], table)
    assert many.result() == one.result()
    assert many.frame_seconds == one.frame_seconds
    if plain_render.AVAILABLE:  # the filter runs step by step in C: the same rounding as update()
        assert (many.jitter, many.max_jitter) == (one.jitter, one.max_jitter)
    else:  # in closed form: equal to the per-packet recursion up to rounding
        assert (many.jitter, many.max_jitter) == pytest.approx((one.jitter, one.max_jitter), rel=1e-12, abs=1e-15)
