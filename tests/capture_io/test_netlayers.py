"""capture.netlayers: link layers, IP, reassembly, tunnels, transports, and bad input."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.netlayers import (
    Datagram,
    NetDecodeError,
    NetDecodeReason,
    PacketDecoder,
)
from capture.pcapio import open_capture

SRC4, DST4 = "192.0.2.1", "198.51.100.7"
SRC6, DST6 = "2001:db8::1", "2001:db8:0:1::2"
SIP = b"OPTIONS sip:bob@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n"

# -- frame builders -------------------------------------------------------------------------------


def a4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def udp(payload: bytes, sport: int = 5060, dport: int = 5062) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(
    payload: bytes, sport: int = 40000, dport: int = 5060, seq: int = 123456789, flags: int = 0x18
) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def ipv4(
    body: bytes,
    proto: int = 17,
    src: str = SRC4,
    dst: str = DST4,
    ident: int = 1,
    frag: int = 0,
    options: bytes = b"",
) -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack(
        "!BBHHHBB2x4s4s", 0x40 | ihl, 0, ihl * 4 + len(body), ident, frag, 64, proto, a4(src), a4(dst)
    )
    return head + options + body


def ipv6(body: bytes, nh: int = 17, src: str = SRC6, dst: str = DST6) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), nh, 64, a6(src), a6(dst)) + body


def ext(nh: int, length8: int = 0) -> bytes:
    """A generic IPv6 extension header of (length8 + 1) * 8 bytes."""
    return bytes([nh, length8]) + b"\x01\x00" * (3 + 4 * length8)


def eth(body: bytes, etype: int = 0x0800) -> bytes:
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + struct.pack("!H", etype) + body


def tag(tpid: int, vid: int) -> bytes:
    return struct.pack("!HH", tpid, vid)


def gre(body: bytes, ptype: int, *, csum: bool = False, key: bool = False, seq: bool = False) -> bytes:
    flags = (0x8000 if csum else 0) | (0x2000 if key else 0) | (0x1000 if seq else 0)
    head = struct.pack("!HH", flags, ptype)
    if csum:
        head += b"\xaa\xaa\x00\x00"
    if key:
        head += b"\x00\x00\x00\x2a"
    if seq:
        head += b"\x00\x00\x00\x07"
    return head + body


def expect_udp(d: Datagram | None, src: str = SRC4, dst: str = DST4, payload: bytes = SIP) -> None:
    assert d is not None
    assert (d.proto, d.src, d.sport, d.dst, d.dport, d.payload) == (17, src, 5060, dst, 5062, payload)
    assert (d.tcp_seq, d.tcp_flags) == (0, 0)


UDP4 = ipv4(udp(SIP))
UDP6 = ipv6(udp(SIP))

# -- link layers ----------------------------------------------------------------------------------


def test_ethernet_ipv4_udp() -> None:
    dec = PacketDecoder()
    d = dec.decode(12.5, 1, eth(UDP4))
    expect_udp(d)
    assert d is not None and d.ts == 12.5
    assert dec.datagrams == 1
    assert not dec.skipped


def test_ethernet_padding_and_trailer_ignored() -> None:
    small = ipv4(udp(b"hi"))
    frame = eth(small) + b"\0" * (60 - 14 - len(small)) + b"FCS!"
    d = PacketDecoder().decode(0.0, 1, frame)
    expect_udp(d, payload=b"hi")


def test_ipv4_options() -> None:
    d = PacketDecoder().decode(0.0, 1, eth(ipv4(udp(SIP), options=b"\x01\x01\x01\x00")))
    expect_udp(d)


@pytest.mark.parametrize(
    "tags",
    [
        [tag(0x8100, 100)],
        [tag(0x88A8, 10), tag(0x8100, 20)],
        [tag(0x9100, 10), tag(0x8100, 20)],
        [tag(0x8100, 1), tag(0x8100, 2), tag(0x8100, 3)],
    ],
)
def test_vlan_tags(tags: list[bytes]) -> None:
    # eth() writes the first TPID as ethertype; each tag then carries the next ethertype.
    tpids = [struct.unpack("!H", t[:2])[0] for t in tags]
    body = b""
    for i, t in enumerate(tags):
        nxt = tpids[i + 1] if i + 1 < len(tags) else 0x0800
        body += t[2:4] + struct.pack("!H", nxt)
    expect_udp(PacketDecoder().decode(0.0, 1, eth(body + UDP4, tpids[0])))


def test_ethernet_ipv6() -> None:
    expect_udp(PacketDecoder().decode(0.0, 1, eth(UDP6, 0x86DD)), SRC6, DST6)


def test_pppoe() -> None:
    pppoe = struct.pack("!BBHHH", 0x11, 0, 0x1234, len(UDP4) + 2, 0x0021)
    expect_udp(PacketDecoder().decode(0.0, 1, eth(pppoe + UDP4, 0x8864)))


def test_linux_sll() -> None:
    head = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", 0x0800)
    expect_udp(PacketDecoder().decode(0.0, 113, head + UDP4))
    head6 = head[:-2] + b"\x86\xdd"
    expect_udp(PacketDecoder().decode(0.0, 113, head6 + UDP6), SRC6, DST6)


def test_linux_sll2() -> None:
    head = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, b"\x02" * 8)
    assert len(head) == 20
    expect_udp(PacketDecoder().decode(0.0, 276, head + UDP6), SRC6, DST6)


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip(linktype: int) -> None:
    dec = PacketDecoder()
    expect_udp(dec.decode(0.0, linktype, UDP4))
    expect_udp(dec.decode(0.0, linktype, UDP6), SRC6, DST6)
    expect_udp(dec.decode_ip(0.0, UDP4))


def test_linktype_ipv4_ipv6() -> None:
    dec = PacketDecoder()
    expect_udp(dec.decode(0.0, 228, UDP4))
    expect_udp(dec.decode(0.0, 229, UDP6), SRC6, DST6)
    assert dec.decode(0.0, 228, UDP6) is None
    assert dec.skipped["bad-ip-header"] == 1


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(("family", "packet"), [(2, UDP4), (24, UDP6), (28, UDP6), (30, UDP6)])
def test_null_loopback(order: str, family: int, packet: bytes) -> None:
    d = PacketDecoder().decode(0.0, 0, struct.pack(order + "I", family) + packet)
    assert d is not None and d.payload == SIP


def test_loop_network_order() -> None:
    expect_udp(PacketDecoder().decode(0.0, 108, struct.pack("!I", 2) + UDP4))
    dec = PacketDecoder()
    assert dec.decode(0.0, 108, struct.pack("<I", 2) + UDP4) is None
    assert dec.skipped["not-ip"] == 1


def test_not_ip_and_unsupported() -> None:
    dec = PacketDecoder()
    arp = eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), 0x0806)
    assert dec.decode(0.0, 1, arp) is None
    assert dec.decode(0.0, 147, UDP4) is None
    icmp = ipv4(b"\x08\x00\x00\x00\x00\x01\x00\x01", proto=1)
    assert dec.decode(0.0, 1, eth(icmp)) is None
    assert dec.decode(0.0, 101, ipv6(b"", nh=59)) is None
    assert dec.skipped == {"not-ip": 1, "unsupported-linktype": 1, "not-transport": 2}
    assert dec.datagrams == 0


# -- IPv6 extension headers ------------------------------------------------------------------------


def test_ipv6_extension_headers() -> None:
    # hop-by-hop -> routing -> destination options -> UDP
    chain = ext(43) + ext(60, 1) + ext(17) + udp(SIP)
    expect_udp(PacketDecoder().decode(0.0, 101, ipv6(chain, nh=0)), SRC6, DST6)
    # authentication header: length in 4-octet units minus 2
    ah = bytes([17, 4]) + bytes(22)
    expect_udp(PacketDecoder().decode(0.0, 101, ipv6(ah + udp(SIP), nh=51)), SRC6, DST6)


def test_ipv6_atomic_fragment() -> None:
    frag = struct.pack("!BBHI", 17, 0, 0, 99)
    expect_udp(PacketDecoder().decode(0.0, 101, ipv6(frag + udp(SIP), nh=44)), SRC6, DST6)


def test_ipv6_fragments_reassembled() -> None:
    whole = ext(17) + udp(SIP * 3)  # destination options travel in the fragmentable part
    cut = 48
    first = struct.pack("!BBHI", 60, 0, 0 | 1, 7) + whole[:cut]
    second = struct.pack("!BBHI", 60, 0, cut, 7) + whole[cut:]
    dec = PacketDecoder()
    assert dec.decode(1.0, 101, ipv6(second, nh=44)) is None
    d = dec.decode(1.1, 101, ipv6(first, nh=44))
    expect_udp(d, SRC6, DST6, SIP * 3)
    assert dec.reassembled == 1
    assert dec.pending_fragments == 0


# -- TCP and SCTP ---------------------------------------------------------------------------------


def test_tcp() -> None:
    d = PacketDecoder().decode(3.0, 1, eth(ipv4(tcp(SIP, flags=0x18), proto=6)))
    assert d is not None
    assert (d.proto, d.src, d.sport, d.dst, d.dport, d.payload) == (6, SRC4, 40000, DST4, 5060, SIP)
    assert (d.tcp_seq, d.tcp_flags) == (123456789, 0x18)


def test_tcp_syn_with_options_and_ns_flag() -> None:
    seg = (
        struct.pack("!HHIIBBHHH", 1, 2, 0xFFFFFFFF, 0, (7 << 4) | 1, 0x02, 0, 0, 0)
        + b"\x02\x04\x05\xb4\x01\x01\x01\x00"
    )
    d = PacketDecoder().decode(0.0, 101, ipv6(seg, nh=6))
    assert d is not None
    assert (d.payload, d.tcp_seq, d.tcp_flags) == (b"", 0xFFFFFFFF, 0x102)


def test_sctp() -> None:
    chunk = struct.pack("!BBH", 0, 3, 4 + len(SIP)) + SIP
    common = struct.pack("!HHII", 5060, 5061, 0xDEADBEEF, 0)
    d = PacketDecoder().decode(0.0, 1, eth(ipv4(common + chunk, proto=132)))
    assert d is not None
    assert (d.proto, d.sport, d.dport, d.payload) == (132, 5060, 5061, chunk)


# -- tunnels --------------------------------------------------------------------------------------

OUT_SRC, OUT_DST = "203.0.113.1", "203.0.113.2"


@pytest.mark.parametrize(
    ("csum", "key", "seq"), [(False, False, False), (True, True, True), (False, True, False)]
)
def test_gre_ip(csum: bool, key: bool, seq: bool) -> None:
    dec = PacketDecoder()
    frame = eth(ipv4(gre(UDP4, 0x0800, csum=csum, key=key, seq=seq), proto=47, src=OUT_SRC, dst=OUT_DST))
    expect_udp(dec.decode(0.0, 1, frame))
    frame6 = eth(ipv4(gre(UDP6, 0x86DD, csum=csum, key=key, seq=seq), proto=47, src=OUT_SRC, dst=OUT_DST))
    expect_udp(dec.decode(0.0, 1, frame6), SRC6, DST6)


def test_gre_transparent_ethernet() -> None:
    frame = eth(ipv4(gre(eth(UDP4), 0x6558, key=True), proto=47, src=OUT_SRC, dst=OUT_DST))
    expect_udp(PacketDecoder().decode(0.0, 1, frame))


def test_gre_unsupported() -> None:
    dec = PacketDecoder()
    pptp = struct.pack("!HH", 0x3001, 0x880B) + bytes(12)
    assert dec.decode(0.0, 1, eth(ipv4(pptp, proto=47, src=OUT_SRC, dst=OUT_DST))) is None
    assert dec.skipped["unsupported-tunnel"] == 1


def test_erspan_type_1_2_3() -> None:
    dec = PacketDecoder()
    inner = eth(UDP4)
    type1 = gre(inner, 0x88BE)
    type2 = gre(struct.pack("!II", (1 << 28) | 5, 0) + inner, 0x88BE, seq=True)
    type3 = gre(struct.pack("!III", (2 << 28) | 5, 12345, 0) + inner, 0x22EB, seq=True)
    type3o = gre(struct.pack("!III", (2 << 28) | 5, 12345, 1) + bytes(8) + inner, 0x22EB, seq=True)
    for body in (type1, type2, type3, type3o):
        expect_udp(dec.decode(0.0, 1, eth(ipv4(body, proto=47, src=OUT_SRC, dst=OUT_DST))))


def test_vxlan() -> None:
    vx = struct.pack("!II", 0x08000000, 0x00123400) + eth(UDP4)
    frame = eth(ipv4(udp(vx, 33333, 4789), src=OUT_SRC, dst=OUT_DST))
    expect_udp(PacketDecoder().decode(0.0, 1, frame))


def test_vxlan_port_with_other_traffic_stays_udp() -> None:
    frame = eth(ipv4(udp(b"not vxlan at all, honest", 5060, 4789)))
    d = PacketDecoder().decode(0.0, 1, frame)
    assert d is not None
    assert (d.dport, d.payload) == (4789, b"not vxlan at all, honest")


def test_ip_in_ip_and_6in4() -> None:
    dec = PacketDecoder()
    expect_udp(dec.decode(0.0, 1, eth(ipv4(UDP4, proto=4, src=OUT_SRC, dst=OUT_DST))))
    expect_udp(dec.decode(0.0, 1, eth(ipv4(UDP6, proto=41, src=OUT_SRC, dst=OUT_DST))), SRC6, DST6)
    expect_udp(dec.decode(0.0, 101, ipv6(UDP4, nh=4)))


def test_mpls() -> None:
    dec = PacketDecoder()
    stack = struct.pack("!II", (100 << 12) | 64, (200 << 12) | 0x100 | 64)
    expect_udp(dec.decode(0.0, 1, eth(stack + UDP4, 0x8847)))
    expect_udp(dec.decode(0.0, 1, eth(stack + UDP6, 0x8848)), SRC6, DST6)
    pw = stack + b"\0\0\0\0" + eth(UDP4)
    expect_udp(dec.decode(0.0, 1, eth(pw, 0x8847)))
    endless = struct.pack("!I", 100 << 12) * 40
    assert dec.decode(0.0, 1, eth(endless + UDP4, 0x8847)) is None
    assert dec.skipped["too-deep"] == 1


def test_tunnel_depth_bounded() -> None:
    packet = UDP4
    for _ in range(20):
        packet = ipv4(packet, proto=4, src=OUT_SRC, dst=OUT_DST)
    dec = PacketDecoder()
    assert dec.decode(0.0, 101, packet) is None
    assert dec.skipped["too-deep"] == 1


# -- IPv4 fragments -------------------------------------------------------------------------------

BIG = bytes(range(256)) * 6


def fragments(ident: int = 77, size: int = 400) -> list[bytes]:
    body = udp(BIG)
    out = []
    for off in range(0, len(body), size):
        more = 0x2000 if off + size < len(body) else 0
        out.append(ipv4(body[off : off + size], ident=ident, frag=more | (off // 8)))
    return out


def test_fragments_in_order() -> None:
    dec = PacketDecoder()
    parts = fragments()
    assert len(parts) == 4
    results = [dec.decode(1.0 + i, 101, p) for i, p in enumerate(parts)]
    assert results[:3] == [None, None, None]
    expect_udp(results[3], payload=BIG)
    assert results[3] is not None and results[3].ts == 4.0
    assert dec.skipped == {"fragment-pending": 3}
    assert dec.pending_fragments == 0
    assert dec.reassembled == 1


def test_fragments_out_of_order_with_duplicates() -> None:
    dec = PacketDecoder()
    p = fragments()
    order = [p[3], p[1], p[1], p[0], p[3], p[2]]
    results = [dec.decode(1.0, 1, eth(x)) for x in order]
    assert results[:-1] == [None] * 5
    expect_udp(results[-1], payload=BIG)


def test_fragments_overlapping() -> None:
    body = udp(BIG)
    dec = PacketDecoder()
    a = ipv4(body[:800], ident=5, frag=0x2000)
    b = ipv4(body[400:1200], ident=5, frag=0x2000 | 50)  # overlaps a by 400 bytes
    c = ipv4(body[1000:], ident=5, frag=125)  # overlaps b
    assert dec.decode(0.0, 101, c) is None
    assert dec.decode(0.0, 101, a) is None
    expect_udp(dec.decode(0.0, 101, b), payload=BIG)


def test_fragments_interleaved_datagrams() -> None:
    dec = PacketDecoder()
    one, two = fragments(ident=1), fragments(ident=2)
    got = []
    for x, y in zip(one, two, strict=True):
        got += [dec.decode(0.0, 101, x), dec.decode(0.0, 101, y)]
    assert [g is not None for g in got] == [False] * 6 + [True, True]


def test_fragment_timeout() -> None:
    dec = PacketDecoder()
    p = fragments()
    for x in p[:3]:
        assert dec.decode(100.0, 101, x) is None
    assert dec.pending_fragments == 1
    expect_udp(dec.decode(129.0, 101, UDP4))  # still within 30 s
    assert dec.pending_fragments == 1
    expect_udp(dec.decode(131.0, 101, UDP4))
    assert dec.pending_fragments == 0
    assert dec.skipped["fragment-timeout"] == 1
    assert dec.decode(131.0, 101, p[3]) is None  # the rest arrives too late: pending again
    assert dec.expire(200.0) == 1


def test_fragment_state_is_bounded() -> None:
    dec = PacketDecoder(max_pending=16)
    for ident in range(100):
        assert dec.decode(0.0, 101, fragments(ident=ident)[0]) is None
    assert dec.pending_fragments == 16
    assert dec.skipped["fragment-overflow"] == 84


def test_fragment_conflicting_last() -> None:
    dec = PacketDecoder()
    body = udp(BIG)
    assert dec.decode(0.0, 101, ipv4(body[400:], ident=9, frag=50)) is None
    assert dec.decode(0.0, 101, ipv4(body[400:800], ident=9, frag=50)) is None
    assert dec.skipped["bad-fragment"] == 1


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (1, eth(UDP4)),
        (1, eth(ipv4(tcp(SIP), proto=6))),
        (1, eth(tag(0x8100, 5)[2:] + b"\x86\xdd" + ipv6(ext(17) + udp(SIP), nh=60), 0x8100)),
        (1, eth(ipv4(gre(struct.pack("!II", (1 << 28) | 5, 0) + eth(UDP4), 0x88BE, seq=True), proto=47))),
        (113, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + UDP4),
        (276, struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, bytes(8)) + UDP4),
        (0, struct.pack("<I", 2) + UDP4),
    ],
)
def test_every_truncation_is_counted_not_raised(linktype: int, frame: bytes) -> None:
    dec = PacketDecoder()
    assert dec.decode(0.0, linktype, frame) is not None
    for size in range(len(frame)):
        assert dec.decode(0.0, linktype, frame[:size]) is None
    assert dec.datagrams == 1
    assert sum(dec.skipped.values()) == len(frame)
    assert set(dec.skipped) <= {r.value for r in NetDecodeReason}


def test_reasons_for_broken_headers() -> None:
    dec = PacketDecoder()
    bad_version = bytearray(UDP4)
    bad_version[0] = 0x55
    bad_ihl = bytearray(UDP4)
    bad_ihl[0] = 0x44
    short_udp_len = ipv4(struct.pack("!HHHH", 1, 2, 4, 0) + b"xx")
    long_udp_len = ipv4(struct.pack("!HHHH", 1, 2, 400, 0) + b"xx")
    bad_tcp_off = ipv4(struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 0x40, 0, 0, 0, 0), proto=6)
    cases = {
        "bad-ip-header": [eth(bytes(bad_version)), eth(bytes(bad_ihl))],
        "bad-udp-header": [eth(short_udp_len)],
        "truncated-udp": [eth(long_udp_len)],
        "bad-tcp-header": [eth(bad_tcp_off)],
        "truncated-ip": [eth(UDP4[:-1])],
    }
    for reason, frames in cases.items():
        for frame in frames:
            assert dec.decode(0.0, 1, frame) is None
        assert dec.skipped[reason] == len(frames), reason


def test_net_decode_error_carries_reason_and_offset() -> None:
    err = NetDecodeError(NetDecodeReason.TRUNCATED_UDP, 34, "x")
    assert err.reason is NetDecodeReason.TRUNCATED_UDP
    assert err.offset == 34
    assert "truncated-udp" in str(err) and "34" in str(err)


def test_address_text_is_cached() -> None:
    dec = PacketDecoder()
    a = dec.decode(0.0, 1, eth(UDP4))
    b = dec.decode(0.0, 1, eth(UDP4))
    assert a is not None and b is not None
    assert a.src is b.src
    for i in range(5000):  # more distinct addresses than the cache holds
        d = dec.decode(0.0, 101, ipv4(udp(b""), src=str(ipaddress.IPv4Address(0x0A000000 + i))))
        assert d is not None and d.src == str(ipaddress.IPv4Address(0x0A000000 + i))
    assert len(dec._addrs) <= 4096


@settings(max_examples=1500, deadline=None)
@given(
    linktype=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 9999]),
    frame=st.binary(max_size=200),
)
def test_any_bytes_never_raise(linktype: int, frame: bytes) -> None:
    d = PacketDecoder().decode(0.0, linktype, frame)
    assert d is None or d.proto in (6, 17, 132)


HEADS = [
    eth(b"")[:12],
    eth(ipv4(b"", proto=47))[:34],
    eth(ipv4(b"", proto=17))[:34],
    eth(ipv6(b"", nh=44), 0x86DD)[:54],
    eth(ipv4(b"", proto=4))[:34],
]


@settings(max_examples=1500, deadline=None)
@given(
    head=st.sampled_from(HEADS), tail=st.binary(max_size=120), stamps=st.lists(st.floats(0, 100), max_size=3)
)
def test_structured_garbage_never_raises(head: bytes, tail: bytes, stamps: list[float]) -> None:
    dec = PacketDecoder(max_pending=4)
    for ts in [0.0, *stamps]:
        dec.decode(ts, 1, head + tail)


# -- the corpus -----------------------------------------------------------------------------------


def decode_file(path: Path) -> list[Datagram | None]:
    dec = PacketDecoder()
    with open_capture(path) as reader:
        return [dec.decode(ts, lt, frame) for ts, lt, frame in reader]


def test_corpus_erspan(corpus_pcap: Path) -> None:
    got = decode_file(corpus_pcap / "heplify_erspan_sip_ipv4_udp.pcapng")
    assert len(got) == 140 and all(got)
    first = got[0]
    assert first is not None
    assert (first.proto, first.src, first.sport, first.dst, first.dport) == (
        17,
        "180.173.83.248",
        53221,
        "101.231.48.19",
        5260,
    )
    assert len(first.payload) == 683 - 8
    assert first.payload.startswith(b"SUBSCRIBE sip:20008909@101.231.48.19:5260 SIP/2.0\r\n")


def test_corpus_sll_sctp(corpus_pcap: Path) -> None:
    got = decode_file(corpus_pcap / "heplify_sip_sctp.pcap")
    assert [(d.proto, d.src, d.sport, d.dst, d.dport) for d in got if d] == [
        (132, "10.249.30.11", 57098, "10.108.207.113", 5060),
        (132, "10.249.30.11", 57098, "10.108.207.113", 5060),
        (132, "10.108.207.113", 5060, "10.249.30.11", 5060),
        (132, "10.108.207.113", 5060, "10.249.30.11", 5060),
        (132, "10.249.30.11", 57098, "10.108.207.113", 5060),
    ]
    first = got[0]
    assert first is not None
    assert len(first.payload) == 1500 - 20 - 12
    assert first.payload[0] == 0  # a DATA chunk


def test_corpus_ipv6(corpus_pcap: Path) -> None:
    got = decode_file(corpus_pcap / "heplify_sip_ipv6_udp.pcap")
    assert len(got) == 6 and all(got)
    first = got[0]
    assert first is not None
    assert (first.src, first.sport, first.dst, first.dport) == (
        "fe80::21a:a0ff:fe07:32e0",
        5060,
        "fec0::216:d3ff:fe0d:22c",
        5060,
    )
    assert len(first.payload) == 718 - 8
    assert first.payload.startswith(b"INVITE ")
    assert first.ts == pytest.approx(1328589362.251758, abs=1e-6)


def test_corpus_tcp(corpus_pcap: Path) -> None:
    got = decode_file(corpus_pcap / "heplify_sip_ipv4_tcp.pcap")
    assert len(got) == 84 and all(got)
    syn, synack, invite = got[:3]
    assert syn is not None and synack is not None and invite is not None
    assert (syn.proto, syn.src, syn.sport, syn.dst, syn.dport) == (
        6,
        "10.33.6.100",
        64802,
        "10.33.6.101",
        5060,
    )
    assert (syn.tcp_seq, syn.tcp_flags, syn.payload) == (2441615628, 0x02, b"")
    assert (synack.tcp_seq, synack.tcp_flags) == (3075268677, 0x12)
    assert (invite.tcp_seq, invite.tcp_flags, len(invite.payload)) == (2441615629, 0x18, 788)
    assert invite.payload.startswith(b"INVITE ")


def test_corpus_pppoe_and_fragments(corpus_pcap: Path) -> None:
    got = decode_file(corpus_pcap / "DTMFsipinfo.pcap")
    assert len(got) == 32 and all(got)
    got = decode_file(corpus_pcap / "voipshark_SIP-SRTP-Normal_Call_two_parties.pcap")
    assert got[57] is None  # first fragment of an INVITE
    whole = got[58]
    assert whole is not None
    assert (whole.src, whole.sport, whole.dst, whole.dport) == (
        "192.168.20.132",
        56330,
        "192.168.20.130",
        5060,
    )
    assert len(whole.payload) == 1725 - 8
    assert whole.payload.startswith(b"INVITE ")


TSHARK_FIELDS = [
    "frame.number",
    "ip.src",
    "ipv6.src",
    "udp.srcport",
    "tcp.srcport",
    "sctp.srcport",
    "ip.dst",
    "ipv6.dst",
    "udp.dstport",
    "tcp.dstport",
    "sctp.dstport",
]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize(
    "name",
    [
        "heplify_erspan_sip_ipv4_udp.pcapng",
        "heplify_sip_sctp.pcap",
        "heplify_sip_ipv6_udp.pcap",
        "heplify_sip_ipv4_tcp.pcap",
        "heplify_sip_tcp_websocket.pcap",
        "DTMFsipinfo.pcap",
        "b2bua-asterisk.pcapng",
        "SIP_CALL_RTP_G711.pcap",
        "voipshark_SIP-SRTP-Normal_Call_two_parties.pcap",
    ],
)
def test_corpus_matches_tshark(corpus_pcap: Path, name: str) -> None:
    """Every frame tshark sees a transport header in (ICMP errors aside) gives the same 4-tuple."""
    cmd = [
        "tshark",
        "-r",
        str(corpus_pcap / name),
        "-n",
        "-Y",
        "not icmp and not icmpv6",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]
    for field in TSHARK_FIELDS:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    want = {}
    for line in out.splitlines():
        num, s4, s6, us, ts_, ss, d4, d6, ud, td, sd = line.split("|")
        sport = us or ts_ or ss
        if sport:
            # Tunnelled frames list outer then inner addresses; the innermost is last.
            want[int(num)] = (
                (s4 or s6).split(",")[-1],
                int(sport),
                (d4 or d6).split(",")[-1],
                int(ud or td or sd),
            )
    got = {i: (d.src, d.sport, d.dst, d.dport) for i, d in enumerate(decode_file(corpus_pcap / name), 1) if d}
    assert got == want
