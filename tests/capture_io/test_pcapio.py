"""capture.pcapio: format sniffing, streaming records, truncation, corruption, the writer."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.pcapio import (
    CHUNK_SIZE,
    CaptureError,
    CaptureErrorReason,
    PcapWriter,
    open_capture,
)
from tests.conftest import CORPUS, CORPUS_PCAP

LINKTYPES = {"ether": 1, "linux-sll": 113}


def corpus_counts() -> dict[str, tuple[int, int]]:
    """file name -> (link type, record count), from the capinfos lines of pcap_tshark_stats.txt."""
    stats = CORPUS / "pcap_tshark_stats.txt"
    if not stats.is_file():
        return {}
    counts = {}
    for line in stats.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[2].isdigit():
            counts[parts[0]] = (LINKTYPES[parts[1]], int(parts[2]))
    return counts


COUNTS = corpus_counts()


def read_all(path: Path) -> list[tuple[float, int, bytes]]:
    with open_capture(path) as reader:
        return list(reader)


def frames(n: int, size: int = 60) -> list[bytes]:
    return [bytes([i & 0xFF]) * (size + i % 7) for i in range(n)]


def write_pcap(
    path: Path,
    records: list[tuple[float, bytes]],
    *,
    linktype: int = 1,
    nano: bool = False,
    big: bool = False,
) -> None:
    with open(path, "wb") as f:
        writer = PcapWriter(f, linktype, nanosecond=nano, big_endian=big)
        for ts, frame in records:
            writer.write(ts, frame)


# -- pcapng builder -------------------------------------------------------------------------------


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(order: str = "<", major: int = 1) -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, major, 0, -1), order)


def idb(linktype: int, order: str = "<", tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), order)
    if tsoffset is not None:
        opts += option(14, struct.pack(order + "q", tsoffset), order)
    if opts:
        opts += option(0, b"", order)
    return block(1, struct.pack(order + "HHI", linktype, 0, 0) + opts, order)


def epb(if_id: int, ts_units: int, data: bytes, order: str = "<") -> bytes:
    body = struct.pack(
        order + "IIIII", if_id, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data) + 10
    )
    return block(6, body + data, order)


def spb(data: bytes, order: str = "<") -> bytes:
    return block(3, struct.pack(order + "I", len(data)) + data, order)


# -- the corpus -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_corpus_record_counts(corpus_pcap: Path, name: str) -> None:
    linktype, count = COUNTS[name]
    path = corpus_pcap / name
    with open_capture(path) as reader:
        records = list(reader)
        assert reader.records == count
        assert reader.bytes_read == reader.size == path.stat().st_size
        assert reader.truncated_at is None
        assert reader.warnings == []
    assert len(records) == count
    assert {lt for _, lt, _ in records} == {linktype}
    assert all(isinstance(frame, bytes) and frame for _, _, frame in records)


def test_corpus_is_complete() -> None:
    if not CORPUS_PCAP.is_dir():
        pytest.skip("no corpus")
    assert sorted(p.name for p in CORPUS_PCAP.iterdir()) == sorted(COUNTS)


def test_corpus_timestamps_and_lengths(corpus_pcap: Path) -> None:
    # Values from tshark -T fields -e frame.time_epoch -e frame.cap_len.
    recs = read_all(corpus_pcap / "heplify_erspan_sip_ipv4_udp.pcapng")
    assert recs[0][0] == pytest.approx(1526006114.962510, abs=1e-6)
    assert recs[1][0] == pytest.approx(1526006114.965448, abs=1e-6)
    assert len(recs[0][2]) == 759
    recs = read_all(corpus_pcap / "heplify_sip_ipv6_udp.pcap")
    assert recs[0][0] == pytest.approx(1328589362.251758, abs=1e-6)
    recs = read_all(corpus_pcap / "heplify_sip_sctp.pcap")
    assert recs[0][1] == 113
    assert len(recs[0][2]) == 1500 + 16


def test_corpus_gzipped(corpus_pcap: Path, tmp_path: Path) -> None:
    for name in ("sip-488-codec-reject.pcapng", "sipp_g711a.pcap"):
        original = corpus_pcap / name
        packed = tmp_path / (name + ".gz")
        packed.write_bytes(gzip.compress(original.read_bytes()))
        with open_capture(packed) as reader:
            assert reader.size is None
            assert list(reader) == read_all(original)
            assert reader.bytes_read == original.stat().st_size


# -- pcap -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("big", [False, True])
def test_pcap_roundtrip(tmp_path: Path, nano: bool, big: bool) -> None:
    path = tmp_path / "x.pcap"
    stamps = [1_700_000_000.0 + i * 0.020001 for i in range(50)]
    data = frames(50)
    write_pcap(path, list(zip(stamps, data, strict=True)), linktype=113, nano=nano, big=big)
    magic = path.read_bytes()[:4]
    assert (
        magic
        == {
            (False, False): b"\xd4\xc3\xb2\xa1",
            (False, True): b"\xa1\xb2\xc3\xd4",
            (True, False): b"\x4d\x3c\xb2\xa1",
            (True, True): b"\xa1\xb2\x3c\x4d",
        }[(nano, big)]
    )
    with open_capture(path) as reader:
        assert reader.format == "pcap"
        assert reader.linktype == 113
        got = list(reader)
    assert [f for _, _, f in got] == data
    assert {lt for _, lt, _ in got} == {113}
    for (ts, _, _), want in zip(got, stamps, strict=True):
        assert ts == pytest.approx(want, abs=1e-6)


def test_pcap_nanosecond_precision(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    with open(path, "wb") as f:
        PcapWriter(f, nanosecond=True)
        f.write(struct.pack("<IIII", 10, 123_456_789, 1, 1) + b"x")
    ((ts, _, _),) = read_all(path)
    assert ts == pytest.approx(10.123456789, abs=1e-12)


def test_pcap_linktype_fcs_bits_ignored(tmp_path: Path) -> None:
    path = tmp_path / "fcs.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x14000001))
    with open_capture(path) as reader:
        assert reader.linktype == 1
        assert list(reader) == []


def test_big_file_crosses_chunks(tmp_path: Path) -> None:
    # Records of many sizes so that several straddle the 1 MiB chunk boundaries.
    data = [bytes([i % 251]) * (i * 37 % 9000 + 1) for i in range(900)]
    path = tmp_path / "big.pcap"
    write_pcap(path, [(float(i), d) for i, d in enumerate(data)])
    assert path.stat().st_size > 3 * CHUNK_SIZE
    with open_capture(path) as reader:
        assert [f for _, _, f in reader] == data
        assert reader.records == 900
    with open_capture(path) as reader:
        assert [f for batch in reader.iter_batches(100) for _, _, f in batch] == data
    packed = tmp_path / "big.pcap.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    with open_capture(packed) as reader:
        assert [f for _, _, f in reader] == data


def test_records_is_exact_after_early_stop(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    write_pcap(path, [(1.0, f) for f in frames(10)])
    with open_capture(path) as reader:
        it = iter(reader)
        next(it)
        next(it)
    assert reader.records == 2


def test_pcap_truncated_at_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "full.pcap"
    data = frames(4, size=20)
    write_pcap(path, [(1.5, f) for f in data])
    full = path.read_bytes()
    starts = [24]
    for f in data:
        starts.append(starts[-1] + 16 + len(f))
    cut = tmp_path / "cut.pcap"
    for size in range(len(full) + 1):
        cut.write_bytes(full[:size])
        if size < 4:
            with pytest.raises(CaptureError) as info:
                open_capture(cut)
            assert info.value.reason is CaptureErrorReason.NOT_A_CAPTURE
            continue
        if size < 24:
            with pytest.raises(CaptureError) as info:
                open_capture(cut)
            assert info.value.reason is CaptureErrorReason.TRUNCATED_HEADER
            continue
        with open_capture(cut) as reader:
            got = [f for _, _, f in reader]
        complete = sum(1 for s in starts[1:] if s <= size)
        assert got == data[:complete]
        if size in starts:
            assert reader.truncated_at is None
            assert reader.warnings == []
        else:
            assert reader.truncated_at == starts[complete]
            assert str(starts[complete]) in reader.warnings[0]


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("INVITE sip:bob@example.com SIP/2.0\r\n" * 3)
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason is CaptureErrorReason.NOT_A_CAPTURE
    assert info.value.offset == 0
    assert info.value.path == str(path)
    assert "notes.txt" in str(info.value)
    with pytest.raises(CaptureError) as info:
        open_capture(path, name="upload #7")
    assert "upload #7" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason is CaptureErrorReason.NOT_A_CAPTURE


def test_gzip_of_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"hello world, this is no capture"))
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason is CaptureErrorReason.NOT_A_CAPTURE


def test_gzip_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason in (CaptureErrorReason.BAD_COMPRESSION, CaptureErrorReason.NOT_A_CAPTURE)


def test_gzip_truncated(tmp_path: Path) -> None:
    plain = tmp_path / "x.pcap"
    data = [bytes(range(256)) * 4 for _ in range(200)]
    write_pcap(plain, [(2.0, f) for f in data])
    packed = gzip.compress(plain.read_bytes(), compresslevel=0)
    path = tmp_path / "x.pcap.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with open_capture(path) as reader:
        got = [f for _, _, f in reader]
        assert 0 < len(got) < 200
        assert got == data[: len(got)]
        assert reader.truncated_at is not None
        assert any("gzip" in w for w in reader.warnings)


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "v3.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1))
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason is CaptureErrorReason.UNSUPPORTED_VERSION


def test_pcap_corrupt_middle_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    write_pcap(path, [(1.0, f) for f in frames(3, size=30)])
    raw = bytearray(path.read_bytes())
    second = 24 + 16 + 30
    struct.pack_into("<I", raw, second + 8, 0x7FFFFFFF)
    raw += b"\0" * 100
    path.write_bytes(bytes(raw))
    with open_capture(path) as reader:
        it = iter(reader)
        assert next(it)[2] == frames(1, size=30)[0]
        with pytest.raises(CaptureError) as info:
            next(it)
    assert info.value.reason is CaptureErrorReason.CORRUPT_RECORD
    assert info.value.offset == second
    assert "bad.pcap" in str(info.value)
    assert f"offset {second}" in str(info.value)


# -- pcapng ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_two_interfaces(tmp_path: Path, order: str) -> None:
    eth, raw = b"E" * 40, b"R" * 33
    content = (
        shb(order)
        + idb(1, order)  # default resolution: microseconds
        + idb(101, order, tsresol=9, tsoffset=1_000)  # nanoseconds, offset by 1000 s
        + block(4, b"\0" * 8, order)  # name resolution block: skipped
        + epb(0, 1_600_000_000_123_456, eth, order)
        + epb(1, 5_000_000_001, raw, order)
        + block(0x00000BAD, b"custom", order)  # custom block: skipped
        + block(5, b"\0" * 20, order)  # interface statistics: skipped
        + spb(b"S" * 10, order)
    )
    path = tmp_path / "two.pcapng"
    path.write_bytes(content)
    with open_capture(path) as reader:
        assert reader.format == "pcapng"
        got = list(reader)
        assert reader.truncated_at is None
    assert [(lt, f) for _, lt, f in got] == [(1, eth), (101, raw), (1, b"S" * 10)]
    assert got[0][0] == pytest.approx(1_600_000_000.123456, abs=1e-6)
    assert got[1][0] == pytest.approx(1005.000000001, abs=1e-9)
    assert got[2][0] == got[1][0]  # a simple packet block has no time: the previous one repeats


def test_pcapng_power_of_two_resolution(tmp_path: Path) -> None:
    path = tmp_path / "p2.pcapng"
    path.write_bytes(shb() + idb(1, tsresol=0x80 | 10) + epb(0, 3 * 1024 + 512, b"x" * 20))
    ((ts, _, _),) = read_all(path)
    assert ts == 3.5


def test_pcapng_sections_change_byte_order(tmp_path: Path) -> None:
    path = tmp_path / "sections.pcapng"
    path.write_bytes(
        shb("<")
        + idb(1, "<")
        + epb(0, 1_000_000, b"a" * 20, "<")
        + shb(">")
        + idb(113, ">", tsresol=3)
        + epb(0, 2_000, b"b" * 20, ">")
    )
    got = read_all(path)
    assert got == [(1.0, 1, b"a" * 20), (2.0, 113, b"b" * 20)]


def test_pcapng_interfaces_reset_per_section(tmp_path: Path) -> None:
    path = tmp_path / "reset.pcapng"
    path.write_bytes(shb() + idb(1) + idb(1) + shb() + idb(1) + epb(1, 0, b"x"))
    with open_capture(path) as reader, pytest.raises(CaptureError) as info:
        list(reader)
    assert info.value.reason is CaptureErrorReason.CORRUPT_RECORD


def test_pcapng_spb_snaplen(tmp_path: Path) -> None:
    idb_snap = block(1, struct.pack("<HHI", 1, 0, 8))
    path = tmp_path / "snap.pcapng"
    path.write_bytes(shb() + idb_snap + spb(b"0123456789ABCDEF"))
    assert read_all(path) == [(0.0, 1, b"01234567")]


def test_pcapng_truncated_at_every_byte(tmp_path: Path) -> None:
    head = shb() + idb(1)
    packets = [epb(0, i, bytes([i]) * (20 + i)) for i in range(3)]
    full = head + b"".join(packets)
    starts = [len(head)]
    for p in packets:
        starts.append(starts[-1] + len(p))
    cut = tmp_path / "cut.pcapng"
    for size in range(28, len(full) + 1):
        cut.write_bytes(full[:size])
        with open_capture(cut) as reader:
            got = list(reader)
        complete = sum(1 for s in starts[1:] if s <= size)
        assert [f for _, _, f in got] == [bytes([i]) * (20 + i) for i in range(complete)]
        if size in (28, *starts):
            assert reader.truncated_at is None
        elif size < starts[0]:
            assert reader.truncated_at == 28
        else:
            assert reader.truncated_at == starts[complete]
    for size in range(4, 28):
        cut.write_bytes(full[:size])
        with pytest.raises(CaptureError) as info:
            open_capture(cut)
        assert info.value.reason is CaptureErrorReason.TRUNCATED_HEADER


@pytest.mark.parametrize(
    ("mangle", "what"),
    [
        (lambda b: struct.pack("<II", 6, 30) + b[8:], "not a multiple of 4"),
        (lambda b: struct.pack("<II", 6, 8) + b[8:], "below 12"),
        (lambda b: b[:-4] + struct.pack("<I", len(b) + 4), "trailing length"),
        (lambda b: b[:20] + struct.pack("<I", 999) + b[24:], "caplen beyond block"),
        (lambda b: b[:8] + struct.pack("<I", 7) + b[12:], "unknown interface"),
    ],
)
def test_pcapng_corrupt_block(tmp_path: Path, mangle: object, what: str) -> None:
    assert callable(mangle)
    head = shb() + idb(1) + epb(0, 0, b"g" * 20)
    bad = mangle(epb(0, 0, b"x" * 20))
    path = tmp_path / "bad.pcapng"
    path.write_bytes(head + bad + epb(0, 0, b"y" * 20))
    with open_capture(path) as reader:
        it = iter(reader)
        assert next(it)[2] == b"g" * 20
        with pytest.raises(CaptureError) as info:
            list(it)
    assert info.value.reason is CaptureErrorReason.CORRUPT_RECORD, what
    assert info.value.offset == len(head)
    assert f"offset {len(head)}" in str(info.value)


def test_pcapng_bad_version_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "v2.pcapng"
    path.write_bytes(shb(major=2))
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason is CaptureErrorReason.UNSUPPORTED_VERSION
    path.write_bytes(shb()[:8] + b"\0\0\0\0" + shb()[12:])
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert info.value.reason is CaptureErrorReason.NOT_A_CAPTURE


def test_writer_to_memory() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf, linktype=101)
    writer.write(0.9999999, b"abc")
    sec, usec, caplen, orig = struct.unpack_from("<IIII", buf.getvalue(), 24)
    assert (sec, usec, caplen, orig) == (1, 0, 3, 3)


# -- property -------------------------------------------------------------------------------------

PREFIXES = [
    b"",
    struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1),
    struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1),
    shb() + idb(1),
    shb(">"),
    b"\x1f\x8b",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(PREFIXES), tail=st.binary(max_size=400))
def test_any_bytes_iterate_or_raise_capture_error(tmp_path: Path, prefix: bytes, tail: bytes) -> None:
    path = tmp_path / "fuzz.bin"
    path.write_bytes(prefix + tail)
    try:
        with open_capture(path) as reader:
            for ts, linktype, frame in reader:
                assert isinstance(ts, float)
                assert isinstance(linktype, int)
                assert isinstance(frame, bytes)
    except CaptureError as exc:
        assert isinstance(exc.reason, CaptureErrorReason)
