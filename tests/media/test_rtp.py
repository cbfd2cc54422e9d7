"""RTP/RTCP/telephone-event records and the wrap helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.rtp import (
    EVENT_DIGITS,
    RtpErrorReason,
    RtpPacket,
    RtpParseError,
    SequenceUnwrapper,
    TelephoneEvent,
    TimestampUnwrapper,
    is_rtcp,
    parse_rtcp,
)
from tests.media import load_datagrams

ALL_FIXTURES = [
    "sipp_g711a.tsv",
    "sipp_dtmf_2833_1.tsv",
    "heplify_pcma_cn.tsv",
    "g722.tsv",
    "opus99.tsv",
    "g729a.tsv",
    "ilbc.tsv",
    "opus107.tsv",
    "codec_negotiation.tsv",
]


def test_sipp_g711a_first_packet_fields() -> None:
    data = load_datagrams("sipp_g711a.tsv")[0].payload
    packet = RtpPacket.parse(data)
    assert packet.version == 2
    assert packet.padding == b""
    assert packet.extension is False
    assert packet.extension_profile is None and packet.extension_value is None
    assert packet.marker is True
    assert packet.payload_type == 8
    assert packet.sequence_number == 0xE6FD
    assert packet.timestamp == 0xF0
    assert packet.ssrc == 0xDEE0EE8F
    assert packet.csrc == ()
    assert packet.payload == data[12:]
    assert len(packet.payload) == 240
    assert bytes(packet) == data
    assert repr(packet) == "RtpPacket(seq=59133, ts=240, ssrc=0xdee0ee8f, pt=8, m=1, 240 bytes)"


def test_sipp_g711a_whole_stream() -> None:
    packets = [RtpPacket.parse(d.payload) for d in load_datagrams("sipp_g711a.tsv")]
    assert len(packets) == 236
    assert {p.payload_type for p in packets} == {8}
    assert {p.ssrc for p in packets} == {0xDEE0EE8F}
    assert [p.marker for p in packets].count(True) == 1
    sequence = SequenceUnwrapper()
    extended = [sequence.unwrap(p.sequence_number) for p in packets]
    assert extended == list(range(0xE6FD, 0xE6FD + 236))
    assert [p.timestamp for p in packets] == [240 * (i + 1) for i in range(236)]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_corpus_round_trip(name: str) -> None:
    for datagram in load_datagrams(name):
        if is_rtcp(datagram.payload):
            continue
        packet = RtpPacket.parse(datagram.payload)
        assert bytes(packet) == datagram.payload
        assert packet.version == 2


@pytest.mark.parametrize(
    ("name", "payload_type", "payload_size"),
    [
        ("g722.tsv", 9, 160),
        ("opus99.tsv", 99, None),
        ("g729a.tsv", 18, 20),
        ("ilbc.tsv", 99, 50),
        ("opus107.tsv", 107, None),
    ],
)
def test_corpus_payload_types(name: str, payload_type: int, payload_size: int | None) -> None:
    packets = [RtpPacket.parse(d.payload) for d in load_datagrams(name)]
    assert {p.payload_type for p in packets} == {payload_type}
    assert len({p.ssrc for p in packets}) == 1
    if payload_size is not None:
        assert {len(p.payload) for p in packets} == {payload_size}


def test_heplify_pcma_cn_and_rtcp() -> None:
    datagrams = load_datagrams("heplify_pcma_cn.tsv")
    rtcp = [d for d in datagrams if is_rtcp(d.payload)]
    rtp = [RtpPacket.parse(d.payload) for d in datagrams if not is_rtcp(d.payload)]
    assert [d.sport for d in rtcp] == [6051, 6001]
    assert sorted({p.payload_type for p in rtp}) == [8, 13]
    assert sum(p.payload_type == 13 for p in rtp) == 6

    (sender_report,) = parse_rtcp(rtcp[0].payload)  # SR + SDES; SDES skipped
    assert sender_report.packet_type == 200
    assert sender_report.ssrc == 0x42F433D4
    assert sender_report.ntp_timestamp == (0x00200925 << 32) | 0x30624D9B
    assert sender_report.rtp_timestamp == 1884819849
    assert sender_report.packet_count == 1
    assert sender_report.octet_count == 160
    assert sender_report.reports == ()

    (with_block,) = parse_rtcp(rtcp[1].payload)
    (block,) = with_block.reports
    assert with_block.ssrc == 0x5A3361B3
    assert block.ssrc == 0x42F433D4
    assert block.fraction_lost == 0 and block.packets_lost == 0
    assert block.highest_sequence == 0xD444
    assert block.jitter == 0
    assert block.last_sr == 0x09253062
    assert block.delay_since_last_sr == 0x418


def test_rtcp_truncations() -> None:
    data = load_datagrams("heplify_pcma_cn.tsv")
    compound = next(d.payload for d in data if d.sport == 6001)
    for cut in range(1, len(compound)):
        if cut == 52:  # exactly the SR (with its report block): valid on its own
            continue
        with pytest.raises(RtpParseError) as info:
            parse_rtcp(compound[:cut])
        assert info.value.reason in (RtpErrorReason.TRUNCATED, RtpErrorReason.BAD_RTCP)


def test_rtcp_negative_cumulative_loss() -> None:
    block = bytes.fromhex("0000000a" + "01fffffe" + "00000010" + "00000000" * 3)
    packet = bytes.fromhex("81c90007" + "00000001") + block
    (report,) = parse_rtcp(packet)
    assert report.packet_type == 201
    assert report.ntp_timestamp is None
    assert report.reports[0].fraction_lost == 1
    assert report.reports[0].packets_lost == -2


def test_is_rtcp() -> None:
    assert not is_rtcp(load_datagrams("sipp_g711a.tsv")[0].payload)
    assert not is_rtcp(b"\x80\xc8")  # too short
    assert not is_rtcp(bytes.fromhex("00c8000600000000"))  # version 0
    for packet_type in (200, 201, 202, 203, 204, 205, 206, 207):
        assert is_rtcp(bytes([0x80, packet_type]) + bytes(6))
    assert not is_rtcp(bytes([0x80, 0x80 | 63]) + bytes(10))  # RTP marker + PT 63


def test_dtmf_packets() -> None:
    packets = [RtpPacket.parse(d.payload) for d in load_datagrams("sipp_dtmf_2833_1.tsv")]
    assert len(packets) == 10
    assert {p.payload_type for p in packets} == {101}
    assert {p.timestamp for p in packets} == {0x33E0}
    assert [p.marker for p in packets] == [True] + [False] * 9
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert events[0] == TelephoneEvent(event=1, end=False, volume=10, duration=0)
    assert [e.duration for e in events[:7]] == [0, 320, 640, 960, 1280, 1600, 1920]
    assert events[7:] == [TelephoneEvent(event=1, end=True, volume=10, duration=2240)] * 3
    assert all(e.digit == "1" for e in events)
    assert bytes(events[7]) == packets[7].payload


def test_telephone_event_digits_and_truncation() -> None:
    assert [EVENT_DIGITS[n] for n in range(17)] == list("0123456789*#ABCD!")
    assert TelephoneEvent(event=40, end=False, volume=0, duration=0).digit is None
    for cut in range(4):
        with pytest.raises(RtpParseError) as info:
            TelephoneEvent.parse(bytes.fromhex("018a08c0")[:cut])
        assert info.value.reason is RtpErrorReason.TRUNCATED


def _full_packet() -> bytes:
    return bytes(
        RtpPacket(
            payload_type=96,
            sequence_number=0xFFFF,
            timestamp=0xFFFFFFFF,
            ssrc=0x01020304,
            marker=True,
            csrc=(0x11111111, 0x22222222),
            extension_profile=0xBEDE,
            extension_value=bytes(4),
            payload=bytes(10),
            padding=b"\x00\x00\x00\x04",
        )
    )


def test_synthetic_packet_with_csrc_extension_padding() -> None:
    data = _full_packet()
    assert len(data) == 12 + 8 + 8 + 10 + 4
    packet = RtpPacket.parse(data)
    assert packet.csrc == (0x11111111, 0x22222222)
    assert packet.extension is True
    assert packet.extension_profile == 0xBEDE
    assert packet.extension_value == bytes(4)
    assert packet.padding == b"\x00\x00\x00\x04"
    assert packet.payload == bytes(10)
    assert packet.marker is True and packet.payload_type == 96
    assert bytes(packet) == data


def test_every_truncation_raises_with_reason() -> None:
    data = _full_packet()
    for cut in range(len(data)):
        with pytest.raises(RtpParseError) as info:
            RtpPacket.parse(data[:cut])
        if cut < 12:
            expected = RtpErrorReason.TRUNCATED
        elif cut < 20:
            expected = RtpErrorReason.BAD_CSRC
        elif cut < 28:
            expected = RtpErrorReason.BAD_EXTENSION
        else:
            expected = RtpErrorReason.BAD_PADDING  # the last byte read as a (zero) padding count
        assert info.value.reason is expected, cut
        assert 0 <= info.value.offset <= cut


def test_bad_version_and_padding() -> None:
    data = bytearray(load_datagrams("sipp_g711a.tsv")[0].payload)
    for version in (0, 1, 3):
        data[0] = (version << 6) | 0x08
        with pytest.raises(RtpParseError) as info:
            RtpPacket.parse(bytes(data))
        assert info.value.reason is RtpErrorReason.BAD_VERSION
        assert info.value.offset == 0
    data[0] = 0xA0  # P bit; the last byte 0xd5 = 213 padding octets fits
    assert len(RtpPacket.parse(bytes(data)).payload) == 240 - 213
    data[-1] = 250  # padding longer than the payload
    with pytest.raises(RtpParseError) as info:
        RtpPacket.parse(bytes(data))
    assert info.value.reason is RtpErrorReason.BAD_PADDING


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpParseError as exc:
        assert isinstance(exc.reason, RtpErrorReason)
    else:
        assert bytes(packet) == data
    try:
        parse_rtcp(data)
    except RtpParseError:
        pass
    try:
        TelephoneEvent.parse(data)
    except RtpParseError:
        pass


@given(st.binary(min_size=12, max_size=60))
def test_any_v2_header_round_trips_when_valid(tail: bytes) -> None:
    data = bytes([0x80 | (tail[0] & 0x3F)]) + tail[1:]
    try:
        packet = RtpPacket.parse(data)
    except RtpParseError:
        return
    assert bytes(packet) == data


# -- wrap helpers --------------------------------------------------------------------------------


def test_sequence_wrap_forward() -> None:
    unwrapper = SequenceUnwrapper()
    assert [unwrapper.unwrap(v) for v in (65534, 65535, 0, 1)] == [65534, 65535, 65536, 65537]
    assert unwrapper.highest == 65537


def test_sequence_reordered_across_wrap() -> None:
    unwrapper = SequenceUnwrapper()
    assert [unwrapper.unwrap(v) for v in (0, 65535, 1, 65534, 2)] == [0, -1, 1, -2, 2]
    unwrapper = SequenceUnwrapper()
    assert [unwrapper.unwrap(v) for v in (65535, 1, 0, 2)] == [65535, 65537, 65536, 65538]


def test_sequence_many_wraps() -> None:
    unwrapper = SequenceUnwrapper()
    values = [unwrapper.unwrap(n & 0xFFFF) for n in range(0, 5 * 65536, 1000)]
    assert values == list(range(0, 5 * 65536, 1000))


def test_timestamp_wrap() -> None:
    unwrapper = TimestampUnwrapper()
    top = 2**32 - 1
    assert [unwrapper.unwrap(v) for v in (top - 160, top, 0, 159)] == [top - 160, top, top + 1, top + 160]
    unwrapper = TimestampUnwrapper()
    assert [unwrapper.unwrap(v) for v in (0, top, 160)] == [0, -1, 160]
