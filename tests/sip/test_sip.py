"""capture.sip against real messages cut from ../shared/corpus captures (see data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.sip import (
    NameAddr,
    SipErrorReason,
    SipMessage,
    SipParseError,
    SipStreamBuffer,
    SipUri,
    Via,
    canonical_header_name,
    e164_or_none,
    looks_like_sip,
    parse_cseq,
    parse_datagram,
    parse_identity,
    parse_p_asserted_identity,
    parse_remote_party_id,
    privacy,
)

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(p.name for p in DATA.glob("*.sip"))
# Fixtures already in our canonical form ("Name: value", single spaces): bytes(parse(x)) == x.
CANONICAL = [
    "200_g722.sip", "200_opus.sip", "200_sdp_rpid.sip", "407_proxy_authenticate.sip", "603_decline.sip",
    "ack.sip", "bye.sip", "cancel.sip", "info_dtmf.sip", "invite_ipv6.sip", "invite_video.sip",
    "refer_replaces.sip",
]  # fmt: skip


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse(name: str) -> SipMessage:
    return SipMessage.parse(load(name))


def test_fixture_set() -> None:
    assert len(FIXTURES) >= 20


# -- every field of a few messages -------------------------------------------------------------------


def test_invite_with_sdp_every_field() -> None:
    data = load("invite_sdp_recvonly.sip")  # sip-rtp-g711.pcap frame 1 (SIPp)
    msg = SipMessage.parse(data)
    assert msg.is_request
    assert msg.method == "INVITE"
    assert msg.request_uri == "sip:test@10.0.2.15:5060"
    assert msg.status is None and msg.reason_phrase is None
    assert msg.headers == [
        ("Via", "SIP/2.0/UDP 10.0.2.20:5060;branch=z9hG4bK-1966-1-0"),
        ("From", '"PCMU/8000" <sip:sipp@10.0.2.20:5060>;tag=1'),
        ("To", "test <sip:test@10.0.2.15:5060>"),
        ("Call-ID", "1-1966@10.0.2.20"),
        ("CSeq", "1 INVITE"),
        ("Contact", "sip:sipp@10.0.2.20:5060"),
        ("Max-Forwards", "70"),
        ("Content-Type", "application/sdp"),
        ("Content-Length", "123"),
    ]
    assert msg.body == data[-123:]
    assert msg.body.startswith(b"v=0\r\n") and msg.body.endswith(b"a=recvonly\r\n")
    assert msg.raw == data
    assert msg.call_id == "1-1966@10.0.2.20"
    assert msg.cseq == (1, "INVITE")
    assert msg.from_addr == NameAddr("PCMU/8000", SipUri("sip", "sipp", None, "10.0.2.20", 5060), {"tag": "1"})
    assert msg.to_addr == NameAddr("test", SipUri("sip", "test", None, "10.0.2.15", 5060), {})
    assert msg.from_tag == "1"
    assert msg.to_tag is None
    assert msg.top_via_branch == "z9hG4bK-1966-1-0"
    assert msg.content_length == 123
    assert msg.content_type == "application/sdp"
    assert msg.header("content-length") == "123"
    assert msg.header("l") == "123"
    assert msg.header("X-Nothing") is None
    # Canonical form: only "Content-Length:   123" differs.
    assert bytes(msg) == data.replace(b"Content-Length:   123", b"Content-Length: 123")
    assert repr(msg) == "<SipMessage INVITE sip:test@10.0.2.15:5060 call_id='1-1966@10.0.2.20' cseq='1 INVITE' body=123B>"
    assert "\n" not in repr(msg)


def test_200_with_sdp_and_remote_party_id() -> None:
    msg = parse("200_sdp_rpid.sip")  # sip-rtp-g711.pcap frame 4 (FreeSWITCH)
    assert not msg.is_request
    assert (msg.method, msg.request_uri, msg.status, msg.reason_phrase) == (None, None, 200, "OK")
    assert [name for name, _ in msg.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "User-Agent", "Accept", "Allow", "Supported",
        "Allow-Events", "Content-Type", "Content-Disposition", "Content-Length", "Remote-Party-ID",
    ]  # fmt: skip
    assert msg.to_tag == "QvN92t713vSZK"
    assert msg.header_values("Allow") == [
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "INFO", "UPDATE", "REGISTER", "REFER",
        "NOTIFY", "PUBLISH", "SUBSCRIBE",
    ]  # fmt: skip
    assert msg.header_values("Supported") == ["timer", "path", "replaces"]
    assert len(msg.header_values("Allow-Events")) == 13
    assert msg.header_values("Contact") == ["<sip:test@10.0.2.15:5060;transport=udp>"]
    contact = NameAddr.parse(msg.header_values("Contact")[0])
    assert contact.uri.params == {"transport": "udp"}
    assert contact.display_name is None
    (rpid,) = parse_remote_party_id(msg)
    assert rpid.address.display_name == "test"
    assert rpid.address.uri.addr_spec == "sip:test@10.0.2.15"
    assert (rpid.party, rpid.privacy, rpid.screen) == ("calling", "off", False)
    assert len(msg.body) == 226
    assert bytes(msg) == load("200_sdp_rpid.sip")


def test_180_and_invite_with_p_asserted_identity() -> None:
    ringing = parse("180_pai.sip")  # voipshark two-party call, Asterisk B2BUA
    assert (ringing.status, ringing.reason_phrase) == (180, "Ringing")
    assert ringing.cseq == (15587, "INVITE")
    (pai,) = parse_p_asserted_identity(ringing)
    assert pai.display_name == "Alice"
    assert pai.uri.addr_spec == "sip:2222@192.168.20.130"
    assert ringing.content_length == 0 and ringing.body == b""
    via = Via.parse(ringing.header_values("Via")[0])
    assert via == Via(
        "SIP/2.0",
        "UDP",
        "192.168.20.132",
        56330,
        {"rport": "56330", "received": "192.168.20.132", "branch": "z9hG4bKPj9627c4beb0e24804a008d173f7c9ef59"},
    )
    assert via.rport == 56330 and via.received == "192.168.20.132"

    invite = parse("invite_pai.sip")
    (pai,) = parse_p_asserted_identity(invite)
    assert (pai.display_name, pai.uri.user) == ("Bob", "1111")
    assert invite.request_uri == "sip:2222@192.168.20.1:51019;ob"
    assert SipUri.parse(invite.request_uri).params == {"ob": None}
    assert invite.to_addr.uri.params == {"ob": None}
    assert invite.header("Session-Expires") == "1800"
    assert invite.header("x") == "1800"  # compact form of Session-Expires (RFC 4028)
    assert invite.header("Min-SE") == "90"
    assert Via.parse(invite.header_values("v")[0]).rport is None  # bare ;rport flag
    assert privacy(invite) == set()


def test_ack_bye_cancel() -> None:
    ack = parse("ack.sip")
    assert (ack.method, ack.cseq, ack.to_tag) == ("ACK", (1, "ACK"), "QvN92t713vSZK")
    # Contact as an addr-spec without <>: it has no parameters here.
    assert NameAddr.parse(ack.header("Contact") or "").uri.addr_spec == "sip:sipp@10.0.2.20:5060"
    bye = parse("bye.sip")
    assert (bye.method, bye.request_uri, bye.cseq) == ("BYE", "sip:sipp@10.0.2.20:5060", (99749930, "BYE"))
    assert bye.header("Reason") == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    assert Via.parse(bye.header("Via") or "").port is None
    cancel = parse("cancel.sip")
    assert (cancel.method, cancel.cseq) == ("CANCEL", (2, "CANCEL"))
    assert cancel.from_addr.display_name == "sam netmon "
    assert cancel.top_via_branch == "z9hG4bKb26f2c0b-146f-e011-809a-0019cb53db77"


def test_final_error_responses() -> None:
    decline = parse("603_decline.sip")  # SIP_DTMF2.cap
    assert (decline.status, decline.reason_phrase) == (603, "Decline")
    assert decline.from_addr.display_name == "2502"  # token display name
    assert decline.to_tag == "1126267381343--1861991641"
    rejected = parse("488_not_acceptable.sip")
    assert (rejected.status, rejected.reason_phrase, rejected.cseq) == (488, "Not Acceptable Here", (21, "INVITE"))
    assert rejected.from_tag == "5V~AE6uZT"


def test_401_and_407_challenges() -> None:
    www = parse("401_www_authenticate.sip")
    assert www.status == 401
    assert [n for n, _ in www.headers if "Auth" in n] == ["WWW-Authenticate"]
    assert www.header("www-authenticate") == (
        'Digest  realm="asterisk",nonce="1523308197/b3c2fd7ecef8cedfe3158d03d1535eaf",'
        'opaque="519c8f084ff40cf7",algorithm=md5,qop="auth"'
    )
    # Authenticate headers are not comma lists: their commas separate auth-params.
    assert len(www.header_values("WWW-Authenticate")) == 1
    proxy = parse("407_proxy_authenticate.sip")
    assert proxy.header("Proxy-Authenticate") == (
        'Digest qop="auth",nonce="695bd0bc0e572c5791521eac5bceee17",realm="oxe"'
    )
    assert proxy.from_tag == "00E4EF38-be6170-0-16e4-5af571fa-27c1bb98-5af571faz9hG4bK-5af571fa-4ec53b84-45186f0a"


def test_compact_form_invite() -> None:
    data = load("invite_compact.sip")  # suricata-verify_sip_compact_form.pcap
    msg = SipMessage.parse(data)
    assert [name for name, _ in msg.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "User-Agent", "Expires", "Accept", "Content-Type",
        "Content-Length", "Contact", "Max-Forwards", "Allow",
    ]  # fmt: skip
    # The sender escaped the quotes outside a quoted string; we still read the name.
    assert msg.from_addr.display_name == "arik"
    assert msg.from_addr.uri.addr_spec == "sip:816666@voip.brurjula.net"
    assert msg.from_tag == "6433ef9"
    assert msg.to_addr.uri.user == "97239287044"
    assert msg.content_type == "application/sdp"
    # "l: 272" but 372 body bytes: RFC 3261 §18.3 says the extra bytes are discarded.
    assert msg.content_length == 272 and len(msg.body) == 272
    assert msg.raw == data[: len(data) - 100]
    assert [m.raw for m in parse_datagram(data)] == [msg.raw]
    assert Via.parse(msg.header("v") or "").branch == "z9hG4bKnp104984053-44ce4a41192.168.1.2"


def test_refer_with_replaces_and_referred_by() -> None:
    msg = parse("refer_replaces.sip")  # heplify_erspan_sip_ipv4_udp.pcapng, attended transfer
    assert (msg.method, msg.cseq) == ("REFER", (1709929694, "REFER"))
    refer_to = NameAddr.parse(msg.header("r") or "")
    assert refer_to.uri.addr_spec == "sip:20008910@101.231.48.19:5260"
    assert refer_to.uri.headers == {
        "Replaces": "bf3880-0-16e4-5af571fa-38bc4ba4-5af571fa%40101.231.48.19%3Bto-tag%3D41B472DE-"
        "5AF5017B00043725-EFBFB700%3Bfrom-tag%3Dbe6170-0-16e4-5af571fa-27c1bb98-5af571fa"
    }
    assert str(refer_to.uri) == (msg.header("Refer-To") or "")[1:-1]
    assert NameAddr.parse(msg.header("b") or "").uri.user == "20008909"
    assert msg.to_addr.display_name == "test"  # no space before '<'
    assert msg.header_values("Supported") == ["replaces", "100rel", "eventlist"]


def test_info_with_dtmf_relay_body() -> None:
    msg = parse("info_dtmf.sip")  # DTMFsipinfo.pcap
    assert msg.method == "INFO"
    assert msg.content_type == "application/dtmf-relay"
    assert msg.body == b"Signal= 1\r\nDuration= 180\r\n"
    route = NameAddr.parse(msg.header_values("Route")[0])
    assert route.uri.params["lr"] == "on"
    assert route.uri.host == "213.192.59.75"


def test_ipv6_hosts_without_brackets() -> None:
    msg = parse("invite_ipv6.sip")  # heplify_sip_ipv6_udp.pcap writes bare IPv6 in URIs
    uri = SipUri.parse(msg.request_uri or "")
    assert (uri.user, uri.host, uri.port) == ("4321", "fec0:0:0:0:216:d3ff:fe0d:22c", 5060)
    assert str(uri) == "sip:4321@[fec0:0:0:0:216:d3ff:fe0d:22c]:5060"
    assert msg.to_addr.uri.host == "fec0:0:0:0:216:d3ff:fe0d:22c" and msg.to_addr.uri.port is None
    via = Via.parse(msg.header("Via") or "")
    assert (via.host, via.port) == ("fe80:0:0:0:21a:a0ff:fe07:32e0", 5060)
    assert SipUri.parse("sip:alice@[2001:db8::1]:5070;transport=tcp").host == "2001:db8::1"
    assert SipUri.parse("sip:[2001:db8::1]").addr_spec == "sip:[2001:db8::1]"


def test_header_without_content_length_and_two_vias() -> None:
    msg = parse("ack_no_content_length.sip")  # DTMFsipinfo.pcap: no Content-Length on UDP
    assert msg.content_length is None and msg.body == b""
    vias = msg.vias
    assert [(v.host, v.port, v.branch) for v in vias] == [
        ("213.192.59.75", None, "0"),
        ("213.192.59.78", 5080, "z9hG4bKPHoovaL4"),
    ]
    assert msg.header("P-hint") == "rr-enforced"
    assert msg.headers[-1] == ("P-Hint", "rr-enforced")  # unknown names Title-Cased per segment


# -- framing: whole, byte by byte, trailing data, two per datagram, truncation ---------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_whole_bytewise_trailing_and_roundtrip(name: str) -> None:
    data = load(name)
    msg = SipMessage.parse(data)
    assert looks_like_sip(data)
    assert SipMessage.parse(bytes(msg)) == msg
    assert parse_datagram(data) == [msg]
    raw = msg.raw
    # One byte at a time through the stream buffer.
    buf = SipStreamBuffer()
    got: list[SipMessage] = []
    for i in range(len(raw)):
        buf.feed(raw[i : i + 1])
        out = buf.maybe_extract_message()
        if out is not None:
            got.append(out)
    assert got == [msg] and got[0].raw == raw and len(buf) == 0
    # Trailing data: ignored by parse (RFC 3261 §18.3), a keepalive after it yields nothing more.
    if msg.content_length is not None:
        assert SipMessage.parse(raw + b"trailing junk") == msg
        assert parse_datagram(raw + b"\r\n\r\n") == [msg]
        assert parse_datagram(b"\r\n" + raw + b"junk") == [msg]
    # Two messages back to back in one datagram / one stream read, with CRLF keepalives between.
    if msg.content_length is not None:
        two = raw + b"\r\n\r\n" + load("bye.sip")
        assert [m.method or m.status for m in parse_datagram(two)] == [msg.method or msg.status, "BYE"]
        buf.feed(two)
        assert buf.maybe_extract_message() == msg
        assert buf.maybe_extract_message() == parse("bye.sip")
        assert buf.maybe_extract_message() is None


@pytest.mark.parametrize("name", CANONICAL)
def test_bytes_reproduces_canonical_fixture(name: str) -> None:
    data = load(name)
    assert bytes(SipMessage.parse(data)) == data


@pytest.mark.parametrize("name", FIXTURES)
def test_every_truncation_parses_or_raises(name: str) -> None:
    raw = SipMessage.parse(load(name)).raw
    for i in range(len(raw)):
        try:
            msg = SipMessage.parse(raw[:i])
        except SipParseError as exc:
            assert exc.offset <= i
            continue
        # Only a cut inside a body without Content-Length can still parse: to a shorter message.
        assert msg.content_length is None and len(msg.raw) == i


def test_truncation_reasons() -> None:
    raw = load("bye.sip")
    head_end = raw.index(b"\r\n\r\n")
    assert _reason(b"") is SipErrorReason.EMPTY
    assert _reason(b"\r\n\r\n") is SipErrorReason.EMPTY
    assert _reason(raw[:head_end]) is SipErrorReason.INCOMPLETE_HEADERS
    invite = SipMessage.parse(load("invite_sdp_recvonly.sip")).raw
    assert _reason(invite[:-1]) is SipErrorReason.TRUNCATED_BODY


def test_bare_lf_line_endings() -> None:
    for name in ("ack.sip", "bye.sip", "cancel.sip", "603_decline.sip", "refer_replaces.sip"):
        crlf = SipMessage.parse(load(name))
        lf = SipMessage.parse(load(name).replace(b"\r\n", b"\n"))
        assert lf == crlf
    mixed = load("bye.sip").replace(b"\r\n\r\n", b"\n\r\n")
    assert SipMessage.parse(mixed) == parse("bye.sip")


def test_folded_header_lines_are_unfolded() -> None:
    data = load("ack.sip").replace(b"Max-Forwards: 70", b"Subject: lunch\r\n  at noon\r\n\tsharp")
    msg = SipMessage.parse(data)
    assert msg.header("s") == "lunch at noon sharp"
    folded_from = load("ack.sip").replace(b'From: "PCMU/8000" ', b'From: "PCMU/8000"\r\n ')
    assert SipMessage.parse(folded_from).from_addr.display_name == "PCMU/8000"


def test_parse_datagram_keepalive_and_missing_content_length() -> None:
    assert parse_datagram(b"\r\n\r\n") == []
    assert parse_datagram(b"") == []
    body = b"v=0\r\n"
    no_length = load("ack.sip").replace(b"Content-Length: 0\r\n", b"") + body
    (msg,) = parse_datagram(no_length)
    assert msg.body == body  # UDP without Content-Length: the body is the rest of the datagram


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello world\r\n\r\n", SipErrorReason.BAD_START_LINE),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", SipErrorReason.BAD_START_LINE),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", SipErrorReason.BAD_START_LINE),
        (b"INV(TE sip:a@b SIP/2.0\r\n\r\n", SipErrorReason.BAD_START_LINE),
        (b"SIP/2.0 99 Low\r\n\r\n", SipErrorReason.BAD_STATUS_CODE),
        (b"SIP/2.0 2000 OK\r\n\r\n", SipErrorReason.BAD_STATUS_CODE),
        (b"SIP/2.0 200 OK\r\n continued\r\n\r\n", SipErrorReason.BAD_HEADER),
        (b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n", SipErrorReason.BAD_HEADER),
        (b"SIP/2.0 200 OK\r\nBad Name: x\r\n\r\n", SipErrorReason.BAD_HEADER),
        (b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n", SipErrorReason.BAD_CONTENT_LENGTH),
        (b"SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nabc", SipErrorReason.TRUNCATED_BODY),
        (b"SIP/2.0 200 OK\r\nFrom: <sip:a@b>;tag=1\r\n\r\n", SipErrorReason.MISSING_HEADER),
    ],
)
def test_error_reasons(data: bytes, reason: SipErrorReason) -> None:
    assert _reason(data) is reason


def test_mandatory_header_checks() -> None:
    bye = load("bye.sip")
    assert _reason(bye.replace(b"Call-ID: 1-1966@10.0.2.20\r\n", b"")) is SipErrorReason.MISSING_HEADER
    assert _reason(bye.replace(b"CSeq: 99749930 BYE", b"CSeq: BYE")) is SipErrorReason.BAD_CSEQ
    # RFC 3261 §8.1.1.5: the CSeq method must match the request method.
    assert _reason(bye.replace(b"CSeq: 99749930 BYE", b"CSeq: 1 INVITE")) is SipErrorReason.BAD_CSEQ
    assert _reason(bye.replace(b"CSeq: 99749930", b"CSeq: 2147483648")) is SipErrorReason.BAD_CSEQ
    assert _reason(bye.replace(b"From: test <sip:", b"From: test <http:")) is SipErrorReason.BAD_URI
    assert _reason(bye.replace(b"5060>;tag=QvN", b"5060;tag=QvN")) is SipErrorReason.BAD_NAME_ADDR
    # A missing Via is tolerated (ERSPAN/HEP copies sometimes lose it).
    no_via = SipMessage.parse(bye.replace(b"Via: SIP/2.0/UDP 10.0.2.15;rport;branch=z9hG4bKj14v7jcDQN1Kj\r\n", b""))
    assert no_via.top_via_branch is None and no_via.vias == []


def _reason(data: bytes) -> SipErrorReason:
    with pytest.raises(SipParseError) as info:
        SipMessage.parse(data)
    return info.value.reason


# -- stream buffer -------------------------------------------------------------------------------------


def test_stream_buffer_sip_over_tcp() -> None:
    stream = load("tcp_stream_client.bin")  # heplify_sip_ipv4_tcp.pcap, client -> server
    for chunk in (len(stream), 1, 7, 100):
        buf = SipStreamBuffer()
        got: list[SipMessage] = []
        for i in range(0, len(stream), chunk):
            buf.feed(b"\r\n" + stream[i : i + chunk] if i == 0 else stream[i : i + chunk])
            while (msg := buf.maybe_extract_message()) is not None:
                got.append(msg)
        assert [(m.method, m.status, m.cseq) for m in got] == [
            ("INVITE", None, (1, "INVITE")),
            ("ACK", None, (1, "ACK")),
            (None, 200, (1, "BYE")),
        ]
        assert len(got[0].body) == 228 and got[0].vias[0].transport == "TCP"
        assert b"".join(m.raw for m in got) == stream


def test_stream_buffer_size_cap() -> None:
    buf = SipStreamBuffer(max_size=200)
    buf.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"a" * 300)
    with pytest.raises(SipParseError) as info:
        buf.maybe_extract_message()
    assert info.value.reason is SipErrorReason.MESSAGE_TOO_LARGE
    buf = SipStreamBuffer(max_size=1000)
    buf.feed(load("ack.sip").replace(b"Content-Length: 0", b"Content-Length: 5000"))
    with pytest.raises(SipParseError) as info:
        buf.maybe_extract_message()
    assert info.value.reason is SipErrorReason.MESSAGE_TOO_LARGE
    buf = SipStreamBuffer()
    buf.feed(b"\r\n\r\n\r\n")  # keepalives only
    assert buf.maybe_extract_message() is None and len(buf) == 0


# -- hot-path pre-check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"SIP/2.0 200 OK\r\n", True),
        (b"INVITE sip:bob@example.com SIP/2.0\r\n", True),
        (b"MESSAGE sips:bob@example.com SIP/2.0\r\n", True),
        (b"INVITE tel:+15551234 SIP/2.0\r\n", True),
        (b"\x80\x00\x12\x34" + bytes(20), False),  # RTP
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42", False),  # STUN
        (b"HTTP/1.1 200 OK\r\n", False),
        (b"GET /index.html HTTP/1.1\r\n", False),
        (b"invite sip:x SIP/2.0", False),
        (b"", False),
        (b"\r\n\r\n", False),
    ],
)
def test_looks_like_sip(payload: bytes, expected: bool) -> None:
    assert looks_like_sip(payload) is expected


# -- header value helpers --------------------------------------------------------------------------


def test_canonical_header_names() -> None:
    assert canonical_header_name("call-id") == "Call-ID"
    assert canonical_header_name("CSEQ") == "CSeq"
    assert canonical_header_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_header_name("x-custom-thing") == "X-Custom-Thing"
    assert canonical_header_name("bad name") is None
    compact = {
        "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length", "c": "Content-Type",
        "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via", "r": "Refer-To",
        "b": "Referred-By", "o": "Event", "u": "Allow-Events", "x": "Session-Expires", "y": "Identity",
        "a": "Accept-Contact", "j": "Reject-Contact", "d": "Request-Disposition",
    }  # fmt: skip
    for short, full in compact.items():
        assert canonical_header_name(short) == full
        assert canonical_header_name(short.upper()) == full


def test_header_values_split_outside_quotes_and_angles() -> None:
    contact = (
        '"Smith, John" <sip:john@a.example;x="1,2">;expires=60, <sip:j2@b.example>;q=0.5,'
        " sip:j3@c.example"
    )
    msg = SipMessage.parse(load("ack.sip").replace(b"Contact: sip:sipp@10.0.2.20:5060", f"m: {contact}".encode()))
    values = msg.header_values("Contact")
    assert values == [
        '"Smith, John" <sip:john@a.example;x="1,2">;expires=60',
        "<sip:j2@b.example>;q=0.5",
        "sip:j3@c.example",
    ]
    first = NameAddr.parse(values[0])
    assert first.display_name == "Smith, John" and first.params == {"expires": "60"}
    assert first.uri.params == {"x": '"1,2"'}


def test_name_addr_forms() -> None:
    quoted = NameAddr.parse(r'"Bob \"the\" Builder" <sips:bob@example.com:5061>;tag=abc;foo')
    assert quoted.display_name == 'Bob "the" Builder'
    assert (quoted.uri.scheme, quoted.uri.port, quoted.tag, quoted.params) == ("sips", 5061, "abc", {"tag": "abc", "foo": None})
    assert NameAddr.parse(str(quoted)) == quoted
    # addr-spec without <>: the parameters belong to the header (RFC 3261 §20.10).
    bare = NameAddr.parse("sip:alice@atlanta.example;tag=88sja8x")
    assert bare.tag == "88sja8x" and bare.uri.params == {} and bare.display_name is None
    tel = NameAddr.parse("<tel:+1-201-555-0123;phone-context=example.com>")
    assert tel.uri.user == "+1-201-555-0123" and tel.uri.addr_spec == "tel:+1-201-555-0123"
    assert tel.uri.params == {"phone-context": "example.com"}
    for bad in ('"unterminated <sip:a@b>', "<sip:a@b", '"x" sip:a@b', "<sip:a@b> junk", "", "http://x"):
        with pytest.raises(SipParseError):
            NameAddr.parse(bad)


def test_sip_uri_round_trip_and_parts() -> None:
    text = "sip:alice:secret@atlanta.example:5060;transport=tcp;lr?subject=project&priority=urgent"
    uri = SipUri.parse(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sip", "alice", "secret", "atlanta.example", 5060)
    assert uri.params == {"transport": "tcp", "lr": None}
    assert uri.headers == {"subject": "project", "priority": "urgent"}
    assert str(uri) == text
    assert uri.addr_spec == "sip:alice@atlanta.example:5060"
    assert SipUri.parse("sip:+1234;npdi@example.com").user == "+1234;npdi"
    for bad in ("sip:", "sip:a@", "sip:a@b:99999", "sip:a@b:x", "mailto:a@b", "sip:@b", "sip:a@[::1"):
        with pytest.raises(SipParseError) as info:
            SipUri.parse(bad)
        assert info.value.reason is SipErrorReason.BAD_URI


def test_via_and_cseq() -> None:
    via = Via.parse("SIP / 2.0 / tcp [2001:db8::9]:5061;branch=z9hG4bK1;received=2001:db8::1;rport=5062")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "TCP", "2001:db8::9", 5061)
    assert (via.branch, via.received, via.rport) == ("z9hG4bK1", "2001:db8::1", 5062)
    with pytest.raises(SipParseError):
        Via.parse("garbage")
    assert parse_cseq(" 4711   INVITE ") == (4711, "INVITE")
    for bad in ("", "INVITE", "1", "x INVITE", "1 IN VITE!", "99999999999 INVITE"):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_e164_or_none() -> None:
    assert e164_or_none("+1-201-555-0123") == "+12015550123"
    assert e164_or_none("+1 (905) 555.1212") == "+19055551212"
    assert e164_or_none("+4930123456;npdi") == "+4930123456"
    assert e164_or_none("004930123456") == "+4930123456"
    assert e164_or_none("97239287044") == "+97239287044"  # 11+ digits, no trunk prefix
    assert e164_or_none("9055551212") is None  # 10-digit national number: country unknown
    assert e164_or_none("07700900123") is None  # national trunk prefix
    assert e164_or_none("1001") is None
    assert e164_or_none("+123") is None
    assert e164_or_none("+1234567890123456") is None  # 16 digits
    assert e164_or_none("E646657195201") is None
    assert e164_or_none("alice") is None
    assert e164_or_none("") is None


def test_parse_identity_and_privacy() -> None:
    jws = "eyJhbGciOiJFUzI1NiJ9.eyJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifX0.c2lnbmF0dXJl"
    assert parse_identity(f"{jws};info=<https://cert.example.org/passport.cer>;alg=ES256;ppt=shaken") == jws
    assert parse_identity(f"<{jws}>;info=<https://x>") == jws
    assert parse_identity("not a jws;info=<https://x>") is None
    assert parse_identity("") is None
    data = load("ack.sip").replace(b"Max-Forwards: 70", b"Privacy: id; Header\r\nPrivacy: critical")
    assert privacy(SipMessage.parse(data)) == {"id", "header", "critical"}
    pai = load("ack.sip").replace(
        b"Max-Forwards: 70", b'P-Asserted-Identity: "Ann" <sip:+15551234567@x.example>, <tel:+15551234567>, <bad'
    )
    ids = parse_p_asserted_identity(SipMessage.parse(pai))
    assert [i.uri.addr_spec for i in ids] == ["sip:+15551234567@x.example", "tel:+15551234567"]
    assert e164_or_none(ids[0].uri.user or "") == "+15551234567"


# -- properties --------------------------------------------------------------------------------------

SAMPLES = [load(name) for name in FIXTURES]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise(data: bytes) -> None:
    _check_parsers(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_messages_parse_or_raise(sample: bytes, data: st.DataObject) -> None:
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["set", "del", "ins"]))
        byte = data.draw(st.sampled_from([0, 10, 13, 32, 34, 44, 58, 59, 60, 62, 64, 0xC3, 0xFF, 65, 9]))
        if op == "set":
            buf[pos] = byte
        elif op == "del":
            del buf[pos]
        else:
            buf.insert(pos, byte)
    _check_parsers(bytes(buf))


def _check_parsers(data: bytes) -> None:
    try:
        msg = SipMessage.parse(data)
    except SipParseError:
        pass
    else:
        again = SipMessage.parse(bytes(msg))
        assert again == msg
        for value in msg.header_values("Via"):
            try:
                Via.parse(value)
            except SipParseError:
                pass
    try:
        parse_datagram(data)
    except SipParseError:
        pass
    buf = SipStreamBuffer(max_size=1024)
    buf.feed(data)
    try:
        while buf.maybe_extract_message() is not None:
            pass
    except SipParseError:
        pass
    text = data.decode("latin-1")
    for helper in (NameAddr.parse, SipUri.parse, Via.parse, parse_cseq):
        try:
            helper(text)
        except SipParseError:
            pass
    e164_or_none(text)
    parse_identity(text)


def test_from_and_to_parsed_once_per_header_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dialog repeats its From and To: each distinct header text is parsed once, and the cache of
    parsed values is bounded."""
    import capture.sip as sip_module

    calls: list[str] = []
    real = sip_module.NameAddr.parse

    def counting(value: str) -> NameAddr:
        calls.append(value)
        return real(value)

    def message(user: str) -> bytes:
        return (f"BYE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{user}\r\n"
                f"From: <sip:{user}@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\n"
                f"Call-ID: c1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()

    monkeypatch.setattr(sip_module.NameAddr, "parse", staticmethod(counting))
    monkeypatch.setattr(sip_module, "_NAME_ADDRS", {})
    monkeypatch.setattr(sip_module, "_NAME_ADDR_CACHE", 3)
    (first,), (second,) = parse_datagram(message("alice")), parse_datagram(message("alice"))
    assert len(calls) == 2
    assert first.from_addr == second.from_addr and first.from_addr.uri.user == "alice" and first.to_tag == "b"
    for user in ("u1", "u2", "u3", "u4"):  # more distinct values than the cache holds
        (parsed,) = parse_datagram(message(user))
        assert parsed.from_addr.uri.user == user
    assert len(sip_module._NAME_ADDRS) <= 3
