"""RTP reception statistics (RFC 3550 appendix A.1, A.3, A.8) per SSRC, and an E-model MOS estimate.

`StatsTracker.update` takes one packet; `StatsTracker.update_many` takes the packets of one SSRC from a
batch as numpy arrays and gives exactly the same result: it handles the longest prefix it can prove
regular with array operations (no sequence restart, unwrapping unambiguous) and feeds the next packet
to `update`, then carries on. The A.8 jitter recursion runs in C when the compiled module is there,
bit-for-bit the sequential one (see `rfc3550_jitter`).

`Extender` extends 16/32-bit counters like `capture.rtp.SequenceUnwrapper` (same rule: the candidate
closest to the highest value so far) and can do a whole array at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from capture.plain_render import jitter_filter
from capture.rtp import Unwrapper
from capture.spool import CodecSpec

__all__ = [
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "SEEN_WINDOW",
    "Extender",
    "SeenWindow",
    "SpecTable",
    "StatsTracker",
    "StreamStats",
    "estimate_mos",
    "sequence_restarted",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: RFC 3550 A.1: a sequence jump beyond these (forward / backward) means the sender restarted its numbering.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
#: Extended sequence numbers remembered for duplicate detection (older ones are forgotten).
SEEN_WINDOW = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStats:
    """RTP reception statistics of one SSRC in one spool (RFC 3550 appendix A)."""

    stream_id: str
    ssrc: int
    payload_types: tuple[int, ...]
    codec: str | None
    """Label of the audio codec carrying most packets, if any."""
    packets: int
    """RTP packets received, duplicates included."""
    expected: int
    """Highest minus lowest extended sequence number, plus one (A.3)."""
    lost: int
    """`expected` minus distinct packets received, at least 0."""
    duplicates: int
    reordered: int
    """Packets arriving after one with a higher sequence number."""
    jitter_ms: float
    """Final interarrival jitter estimate (A.8), in ms."""
    max_jitter_ms: float
    max_delta_ms: float
    """Largest gap between consecutive arrivals, in ms."""
    first_arrival: float
    last_arrival: float
    r_factor: float | None
    """E-model R (see `estimate_mos`); None without audio."""
    mos: float | None
    """MOS-CQE estimated from `r_factor`."""


# -- E-model --------------------------------------------------------------------------------------

#: (Ie, Bpl) per codec. G.711 and G.729A are ITU-T G.113 Appendix I values (G.711 with PLC);
#: G.723.1, GSM-EFR/AMR 12.2 follow the same tables; G.722, Opus, L16, Speex and iLBC have no
#: narrowband E-model entry and use G.711-like or published estimates (approximations).
_IMPAIRMENT: dict[str, tuple[float, float]] = {
    "PCMU": (0.0, 25.1),
    "PCMA": (0.0, 25.1),
    "L16": (0.0, 25.1),
    "G722": (0.0, 25.1),
    "OPUS": (0.0, 25.1),
    "G729": (11.0, 19.0),
    "G729A": (11.0, 19.0),
    "G723": (15.0, 16.1),
    "AMR": (5.0, 10.0),
    "GSM": (20.0, 10.0),
    "ILBC": (11.0, 32.0),
    "SPEEX": (11.0, 19.0),
}


def estimate_mos(encoding: str, loss_percent: float, delay_ms: float) -> tuple[float, float]:
    """E-model (ITU-T G.107) R-factor and MOS from random packet loss and one-way delay.

    R = 93.2 − Id − Ie,eff with the default Is/A, Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3) (the usual
    simplification of G.107's delay impairment), Ie,eff = Ie + (95 − Ie)·Ppl/(Ppl + Bpl) (BurstR = 1),
    MOS = 1 + 0.035R + 7·10⁻⁶·R(R − 60)(100 − R). Unknown codecs use G.711 values.
    """
    ie, bpl = _IMPAIRMENT.get(encoding.upper(), (0.0, 25.1))
    ppl = max(loss_percent, 0.0)
    ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl)
    idd = 0.024 * delay_ms + (0.11 * (delay_ms - 177.3) if delay_ms > 177.3 else 0.0)
    r = 93.2 - idd - ie_eff
    if r <= 0:
        return r, 1.0
    if r >= 100:
        return r, 4.5
    return r, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


# -- helpers ---------------------------------------------------------------------------------------


def sequence_restarted(highest: int | None, sequence: int) -> bool:
    """True when `sequence` is too far from the highest so far to be loss or reordering.

    Unlike A.1 this does not wait for a second packet to confirm: one stray packet only costs a
    statistics segment, while missing a real restart would drop the new packets as duplicates.
    """
    return highest is not None and not -MAX_MISORDER <= sequence - highest <= MAX_DROPOUT


class Extender(Unwrapper):
    """:class:`capture.rtp.Unwrapper` with a vectorised :meth:`extend_many` for provably regular runs."""

    __slots__ = ()

    def extend_many(self, values: IntArray, low: int, high: int) -> tuple[IntArray, int]:
        """Extend `values` without changing state: (extended, how many lead values are certain).

        A value counts when its distance from the highest before it lies in [low, high] (a subrange of
        (-half, half]), which makes the result the one `unwrap` would give; call `settle` after use.
        """
        steps = (values[1:] - values[:-1]) & self._mask
        steps[steps > self._half] -= self._mask + 1
        highest = self.highest
        if highest is None:
            first = int(values[0])
        else:
            delta = (int(values[0]) - highest) & self._mask
            first = highest + (delta - self._mask - 1 if delta > self._half else delta)
        extended = np.empty(len(values), dtype=np.int64)
        extended[0] = first
        np.cumsum(steps, out=extended[1:])
        extended[1:] += first
        before = np.maximum.accumulate(extended)
        distance = np.empty_like(extended)
        distance[1:] = extended[1:] - before[:-1]
        distance[0] = 0 if highest is None else first - highest
        if highest is not None:
            distance[1:] = np.minimum(distance[1:], extended[1:] - highest)
        bad = np.flatnonzero((distance < low) | (distance > high))
        return extended, int(bad[0]) if len(bad) else len(values)

    def settle(self, extended: IntArray) -> None:
        """Record `extended` (a certain prefix from `extend_many`) as unwrapped."""
        if len(extended):
            top = int(extended.max())
            self.highest = top if self.highest is None else max(self.highest, top)


class SeenWindow:
    """Extended sequence numbers seen recently (for duplicates); older entries are forgotten.

    Entries more than SEEN_WINDOW below the highest may be dropped at any time: a packet that far back
    is a sequence restart (MAX_MISORDER) and never reaches the lookup.
    """

    __slots__ = ("_seen", "highest")

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self.highest = -(1 << 62)

    def check_and_add(self, value: int) -> bool:
        """True when `value` was seen before."""
        if value in self._seen:
            return True
        self._seen.add(value)
        self.highest = max(self.highest, value)
        if len(self._seen) > 2 * SEEN_WINDOW:
            self._prune()
        return False

    def duplicates(self, values: IntArray) -> BoolArray:
        """Which of `values` (no restart among them) were seen before or earlier in `values`."""
        if len(values) < 2 or (values[1:] > values[:-1]).all():
            repeated = np.zeros(len(values), dtype=np.bool_)  # in order: nothing repeats within
        else:
            _, first = np.unique(values, return_index=True)
            repeated = np.ones(len(values), dtype=np.bool_)
            repeated[first] = False
        old = np.flatnonzero(values <= self.highest)
        if len(old):
            seen = self._seen
            for index, value in zip(old.tolist(), values[old].tolist(), strict=True):
                if value in seen:
                    repeated[index] = True
        return repeated

    def add_many(self, values: IntArray) -> None:
        """Remember `values` (distinct, not seen before)."""
        if not len(values):
            return
        self.highest = max(self.highest, int(values.max()))
        floor = self.highest - SEEN_WINDOW
        self._seen.update(values[values >= floor].tolist())
        if len(self._seen) > 2 * SEEN_WINDOW:
            self._prune()

    def _prune(self) -> None:
        floor = self.highest - SEEN_WINDOW
        self._seen = {seen for seen in self._seen if seen >= floor}


class SpecTable:
    """Resolved codec specs of a spool, numbered, with the columns the array code needs."""

    def __init__(self) -> None:
        self.specs: list[CodecSpec | None] = []
        self._index: dict[CodecSpec | None, int] = {}
        self.timed = np.zeros(0, dtype=np.bool_)
        """Spec has an RTP clock the statistics use (known, not telephone-event, clock > 0)."""
        self.comfort_noise = np.zeros(0, dtype=np.bool_)
        self.clock = np.zeros(0, dtype=np.int64)

    def number(self, spec: CodecSpec | None) -> int:
        """The index of `spec`, adding it."""
        index = self._index.get(spec)
        if index is None:
            index = self._index[spec] = len(self.specs)
            self.specs.append(spec)
            timed = [s is not None and s.name != "TELEPHONE-EVENT" and s.clock_rate > 0 for s in self.specs]
            self.timed = np.array(timed, dtype=np.bool_)
            self.comfort_noise = np.array([s is not None and s.name == "CN" for s in self.specs], dtype=np.bool_)
            self.clock = np.array([s.clock_rate if s is not None else 0 for s in self.specs], dtype=np.int64)
        return index


# -- the tracker -----------------------------------------------------------------------------------


class StatsTracker:
    """RFC 3550 A.1/A.3/A.8 statistics for one SSRC."""

    def __init__(self, stream_id: str, ssrc: int, arrival: float) -> None:
        self.stream_id = stream_id
        self.ssrc = ssrc
        self.sequence = Extender(16)
        self.timestamps = Extender(32)
        self.seen = SeenWindow()
        self.payload_types: set[int] = set()
        self.codecs: Counter[str] = Counter()
        self.encoding: dict[str, str] = {}
        self.packets = self.duplicates = self.reordered = 0
        self.lowest: int | None = None
        self.highest: int | None = None
        self._earlier_expected = 0  # packets expected in sequence runs before a restart
        self.first_arrival = self.last_arrival = arrival
        self.max_delta = 0.0
        self.jitter = self.max_jitter = 0.0  # in seconds
        self._transit: float | None = None
        self._clock = 0
        self.frame_seconds = 0.02
        self._last_seq: int | None = None
        self._last_ts: int | None = None

    def update(self, arrival: float, payload_type: int, sequence: int, timestamp: int,
               spec: CodecSpec | None) -> None:
        """Count one packet."""
        self.packets += 1
        if len(self.payload_types) < 16:
            self.payload_types.add(payload_type)
        if self.packets > 1:
            self.max_delta = max(self.max_delta, arrival - self.last_arrival)
        self.last_arrival = arrival
        seq = self.sequence.unwrap(sequence)
        if sequence_restarted(self.highest, seq):
            if self.highest is not None and self.lowest is not None:
                self._earlier_expected += self.highest - self.lowest + 1
            self.sequence, self.seen = Extender(16), SeenWindow()
            seq = self.sequence.unwrap(sequence)
            self.lowest = self.highest = None
        if self.seen.check_and_add(seq):
            self.duplicates += 1
            return
        if self.highest is not None and seq < self.highest:
            self.reordered += 1
        self.highest = seq if self.highest is None else max(self.highest, seq)
        self.lowest = seq if self.lowest is None else min(self.lowest, seq)
        if spec is None or spec.name == "TELEPHONE-EVENT" or spec.clock_rate <= 0:
            return
        ts = self.timestamps.unwrap(timestamp)
        if spec.name != "CN":
            self.codecs[spec.label] += 1
            self.encoding[spec.label] = spec.name
            last_seq, last_ts = self._last_seq, self._last_ts
            if last_seq is not None and last_ts is not None and seq == last_seq + 1 \
                    and 0 < ts - last_ts <= spec.clock_rate:
                self.frame_seconds = (ts - last_ts) / spec.clock_rate
            self._last_seq, self._last_ts = seq, ts
        # A.8: J += (|D| - J)/16 with D the change in relative transit time, here in seconds.
        transit = arrival - ts / spec.clock_rate
        if self._transit is not None and spec.clock_rate == self._clock:
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
            self.max_jitter = max(self.max_jitter, self.jitter)
        self._transit, self._clock = transit, spec.clock_rate

    def update_many(self, arrival: FloatArray, payload_type: IntArray, sequence: IntArray,
                    timestamp: IntArray, spec: IntArray, table: SpecTable) -> None:
        """Count packets given as arrays (arrival order); the same as `update` on each in turn."""
        position, count = 0, len(arrival)
        while position < count:
            done = self._update_prefix(
                arrival[position:], payload_type[position:], sequence[position:], timestamp[position:],
                spec[position:], table,
            )
            position += done
            if position < count:
                self.update(float(arrival[position]), int(payload_type[position]), int(sequence[position]),
                            int(timestamp[position]), table.specs[int(spec[position])])
                position += 1

    def _update_prefix(self, arrival: FloatArray, payload_type: IntArray, sequence: IntArray,
                       timestamp: IntArray, spec: IntArray, table: SpecTable) -> int:
        """Apply the longest regular prefix with array operations; return its length (0: none)."""
        extended, count = self.sequence.extend_many(sequence, -MAX_MISORDER, MAX_DROPOUT)
        if count == 0:
            return 0
        extended = extended[:count]
        repeated = self.seen.duplicates(extended)
        fresh = ~repeated
        timed = fresh & table.timed[spec[:count]]
        timed_index = np.flatnonzero(timed)
        ts_extended = np.zeros(0, dtype=np.int64)
        if len(timed_index):
            ts_extended, ts_count = self.timestamps.extend_many(timestamp[timed_index], -(1 << 31) + 1, 1 << 31)
            if ts_count < len(timed_index):
                count = int(timed_index[ts_count])
                timed_index = timed_index[:ts_count]
                ts_extended = ts_extended[:ts_count]
                if count == 0:
                    return 0
                extended, repeated, fresh = extended[:count], repeated[:count], fresh[:count]
        self._count_arrivals(arrival[:count], payload_type[:count])
        self.sequence.settle(extended)
        values = extended[fresh]
        self.seen.add_many(values)
        self.duplicates += count - len(values)
        if len(values):
            previous = np.maximum.accumulate(values)
            if self.highest is not None:
                np.maximum(previous, self.highest, out=previous)
                self.reordered += int(np.count_nonzero(values[0] < self.highest))
            self.reordered += int(np.count_nonzero(values[1:] < previous[:-1]))
            top, bottom = int(previous[-1]), int(values.min())
            self.highest = top
            self.lowest = bottom if self.lowest is None else min(self.lowest, bottom)
        if len(timed_index):
            self.timestamps.settle(ts_extended)
            self._timing(arrival[timed_index], extended[timed_index], ts_extended, spec[timed_index], table)
        return count

    def _count_arrivals(self, arrival: FloatArray, payload_type: IntArray) -> None:
        if len(self.payload_types) < 16:
            present = np.flatnonzero(np.bincount(payload_type)).tolist()
            if len(self.payload_types.union(present)) > 16:  # which come first decides which are kept
                types, first = np.unique(payload_type, return_index=True)
                present = types[np.argsort(first)].tolist()
            for value in present:
                if len(self.payload_types) >= 16:
                    break
                self.payload_types.add(value)
        if self.packets:
            gap = float(arrival[0]) - self.last_arrival
            self.max_delta = max(self.max_delta, gap)
        if len(arrival) > 1:
            self.max_delta = max(self.max_delta, float(np.max(arrival[1:] - arrival[:-1])))
        self.packets += len(arrival)
        self.last_arrival = float(arrival[-1])

    def _timing(self, arrival: FloatArray, sequence: IntArray, timestamp: IntArray, spec: IntArray,
                table: SpecTable) -> None:
        """Codec counts, packetization and A.8 jitter over the timed, non-duplicate packets."""
        clock = table.clock[spec]
        audio = np.flatnonzero(~table.comfort_noise[spec])
        if len(audio):
            audio_specs = spec[audio]
            first_spec = int(audio_specs[0])
            if not (audio_specs != first_spec).any():
                tally = [(first_spec, len(audio))]
            else:  # Counter order (first seen) breaks most_common ties, so keep it
                numbers, first, counts = np.unique(audio_specs, return_index=True, return_counts=True)
                tally = [(int(numbers[order]), int(counts[order])) for order in np.argsort(first).tolist()]
            for number, count in tally:
                codec = table.specs[number]
                assert codec is not None  # timed specs are known
                self.codecs[codec.label] += count
                self.encoding[codec.label] = codec.name
            seqs, stamps, clocks = sequence[audio], timestamp[audio], clock[audio]
            if self._last_seq is not None and self._last_ts is not None:
                seqs = np.concatenate(([self._last_seq], seqs))
                stamps = np.concatenate(([self._last_ts], stamps))
                clocks = np.concatenate(([0], clocks))
            step = stamps[1:] - stamps[:-1]
            framed = np.flatnonzero((seqs[1:] == seqs[:-1] + 1) & (step > 0) & (step <= clocks[1:]))
            if len(framed):
                last = int(framed[-1])
                self.frame_seconds = int(step[last]) / int(clocks[last + 1])
            self._last_seq, self._last_ts = int(seqs[-1]), int(stamps[-1])
        transit = arrival - timestamp / clock
        if self._transit is not None:
            transit = np.concatenate(([self._transit], transit))
            clock = np.concatenate(([self._clock], clock))
        same = clock[1:] == clock[:-1]
        jitter, top = rfc3550_jitter(np.abs(transit[1:] - transit[:-1])[same], self.jitter)
        self.jitter, self.max_jitter = jitter, max(self.max_jitter, top)
        self._transit, self._clock = float(transit[-1]), int(clock[-1])

    def result(self) -> StreamStats:
        """The statistics so far."""
        expected = self._earlier_expected
        if self.highest is not None and self.lowest is not None:
            expected += self.highest - self.lowest + 1
        lost = max(expected - (self.packets - self.duplicates), 0)
        codec = self.codecs.most_common(1)[0][0] if self.codecs else None
        r = mos = None
        if codec is not None and expected:
            delay_ms = 1000 * (self.frame_seconds + 2 * self.jitter)
            r, mos = estimate_mos(self.encoding[codec], 100.0 * lost / expected, delay_ms)
            r, mos = round(r, 2), round(mos, 2)
        return StreamStats(
            stream_id=self.stream_id,
            ssrc=self.ssrc,
            payload_types=tuple(sorted(self.payload_types)),
            codec=codec,
            packets=self.packets,
            expected=expected,
            lost=lost,
            duplicates=self.duplicates,
            reordered=self.reordered,
            jitter_ms=round(1000 * self.jitter, 3),
            max_jitter_ms=round(1000 * self.max_jitter, 3),
            max_delta_ms=round(1000 * self.max_delta, 3),
            first_arrival=self.first_arrival,
            last_arrival=self.last_arrival,
            r_factor=r,
            mos=mos,
        )


_JITTER_BLOCK = 256
_DECAY = (15 / 16) ** np.arange(1, _JITTER_BLOCK + 1, dtype=np.float64)
_GROWTH = 1 / _DECAY


def rfc3550_jitter(changes: FloatArray, jitter: float) -> tuple[float, float]:
    """RFC 3550 A.8's ``J += (|D| - J) / 16`` over every transit change, from ``jitter``: returns the
    final estimate and the largest one along the way.

    With the compiled module (:mod:`capture.plain_render`) the recursion runs step by step in C,
    rounding exactly as `StatsTracker.update` does. Without it: the recursion is a first-order filter,
    so within a block J_k = a^k (J_0 + sum_i a^-i D_i / 16) with a = 15/16, one cumulative sum per
    block of 256 packets (a^-256 ~ 1.5e7, well inside double precision) instead of a Python step per
    packet; that agrees with the sequential result to about 1e-15 relative.
    """
    compiled = jitter_filter(changes, jitter)
    if compiled is not None:
        return compiled
    top = jitter
    for begin in range(0, len(changes), _JITTER_BLOCK):
        block = changes[begin : begin + _JITTER_BLOCK]
        count = len(block)
        values = (np.cumsum(block * _GROWTH[:count]) / 16 + jitter) * _DECAY[:count]
        jitter = float(values[-1])
        top = max(top, float(values.max()))
    return jitter, top
