"""capture.sdp against SDP bodies of the SIP fixtures (real captures, see data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.sdp import (
    STATIC_PAYLOAD_TYPES,
    MediaDescription,
    Origin,
    RtpMap,
    SdpErrorReason,
    SdpParseError,
    SessionDescription,
)
from capture.sip import SipMessage

DATA = Path(__file__).parent / "data"
WITH_SDP = sorted(
    p.name for p in DATA.glob("*.sip") if SipMessage.parse(p.read_bytes()).content_type == "application/sdp"
)


def sdp_of(name: str) -> SessionDescription:
    return SessionDescription.parse(body_of(name))


def body_of(name: str) -> bytes:
    return SipMessage.parse((DATA / name).read_bytes()).body


def codec_names(m: MediaDescription) -> list[str]:
    return [c.name if c is not None else "?" for c in map(m.codec, m.payload_types)]


def test_fixture_set() -> None:
    assert len(WITH_SDP) >= 12


def test_pcmu_recvonly_offer_every_field() -> None:
    body = body_of("invite_sdp_recvonly.sip")  # sip-rtp-g711.pcap, SIPp
    sdp = SessionDescription.parse(body)
    assert sdp.version == 0
    assert sdp.origin == Origin("-", "42", "42", "IN", "IP4", "10.0.2.20")
    assert sdp.session_name == "-"
    assert sdp.connection == "10.0.2.20"
    assert sdp.bandwidth == {}
    assert sdp.attributes == []
    assert sdp.direction is None
    assert sdp.other == [("t", "0 0")]
    assert sdp.notes == []
    (audio,) = sdp.media
    assert audio == MediaDescription(
        media="audio",
        port=6000,
        port_count=1,
        proto="RTP/AVP",
        formats=["0"],
        attributes=[("rtpmap", "0 PCMU/8000"), ("recvonly", None)],
        rtpmap={0: RtpMap("PCMU", 8000)},
        direction="recvonly",
        session_connection="10.0.2.20",
    )
    assert audio.payload_types == [0]
    assert audio.address(sdp) == "10.0.2.20" and audio.address() == "10.0.2.20"
    assert audio.is_on_hold  # recvonly: not a two-way stream
    assert sdp.audio is audio
    assert bytes(sdp) == body
    assert str(sdp) == body.decode()


def test_answer_pcmu_telephone_event_sendonly_ptime() -> None:
    sdp = sdp_of("200_sdp_rpid.sip")  # FreeSWITCH answer
    audio = sdp.audio
    assert audio is not None
    assert (audio.port, audio.payload_types, audio.direction, audio.ptime) == (27942, [0, 101], "sendonly", 20.0)
    assert audio.rtpmap == {0: RtpMap("PCMU", 8000), 101: RtpMap("telephone-event", 8000)}
    event = audio.codec(101)
    assert event is not None and event.name == "TELEPHONE-EVENT"
    assert audio.fmtp == {101: "0-16"}
    assert audio.maxptime is None and audio.crypto == [] and audio.rtcp is None
    assert sdp.origin is not None and sdp.origin.username == "FreeSWITCH"
    assert bytes(sdp) == body_of("200_sdp_rpid.sip")


def test_g722_and_opus() -> None:
    g722 = sdp_of("200_g722.sip").audio
    assert g722 is not None
    assert g722.codec(9) == RtpMap("G722", 8000)  # 8 kHz RTP clock for 16 kHz audio
    opus = sdp_of("200_opus.sip").audio
    assert opus is not None
    assert opus.rtpmap[99] == RtpMap("opus", 48000, 2)
    assert opus.rtpmap[99].name == "OPUS" and str(opus.rtpmap[99]) == "opus/48000/2"
    assert opus.fmtp[99] == "useinbandfec=1; minptime=10; maxptime=40"


def test_offer_with_many_codecs_maxptime_and_static_table() -> None:
    audio = sdp_of("invite_pai.sip").audio  # Asterisk offer
    assert audio is not None
    assert audio.payload_types == [0, 8, 3, 111, 101]
    assert codec_names(audio) == [
        "PCMU", "PCMA", "GSM", "G726-32", "TELEPHONE-EVENT",
    ]  # fmt: skip
    assert (audio.ptime, audio.maxptime, audio.direction) == (20.0, 150.0, "sendrecv")
    assert not audio.is_on_hold


def test_compact_form_sdp_session_level_lines_and_static_payload_types() -> None:
    # suricata-verify_sip_compact_form.pcap: the SIP Content-Length cuts the SDP inside its z= line.
    sdp = sdp_of("invite_compact.sip")
    assert sdp.session_name == "SIP call"
    assert sdp.connection == "192.168.1.2"
    assert sdp.bandwidth == {"AS": 64}
    assert [t for t, _ in sdp.other] == ["i", "u", "e", "p", "t", "r", "z"]
    assert sdp.other[-1] == ("z", "2882844")  # truncated last line kept as is
    assert sdp.media == []  # the m= line lies beyond Content-Length
    full = SessionDescription.parse((DATA / "invite_compact.sip").read_bytes().partition(b"\r\n\r\n")[2])
    assert full.direction == "sendrecv"
    (audio,) = full.media
    assert audio.payload_types == [0, 8, 97, 2, 3]
    assert audio.codec(0) == RtpMap("pcmu", 8000) and codec_names(audio)[0] == "PCMU"
    assert audio.codec(8) == STATIC_PAYLOAD_TYPES[8] == RtpMap("PCMA", 8000)
    assert audio.codec(3) == RtpMap("GSM", 8000)
    assert audio.codec(97) is None and audio.codec(2) is None
    assert audio.direction == "sendrecv"  # inherited from session level


def test_hold_sendonly_and_zero_address() -> None:
    sdp = sdp_of("invite_sendonly_hold.sip")  # heplify ERSPAN, Alcatel phone puts the call on hold
    assert sdp.connection == "0.0.0.0"
    audio = sdp.audio
    assert audio is not None
    assert audio.direction == "sendonly" and audio.is_on_hold
    assert audio.fmtp == {18: "annexb=no", 101: "0-15"}
    assert codec_names(audio) == [
        "PCMA", "PCMU", "G729", "G723", "TELEPHONE-EVENT",
    ]  # fmt: skip
    # RFC 3264 §8.4 legacy hold: c=0.0.0.0 alone marks the stream as held.
    legacy = SessionDescription.parse(b"v=0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert legacy.media[0].direction == "sendrecv" and legacy.media[0].is_on_hold
    v6 = SessionDescription.parse(b"v=0\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP6 ::\r\n")
    assert v6.media[0].is_on_hold


def test_inactive_and_rejected_stream() -> None:
    sdp = sdp_of("invite_inactive_hold.sip")  # sip-488-codec-reject.pcapng (Linphone)
    (audio,) = sdp.media
    assert (audio.port, audio.direction, audio.is_on_hold) == (0, "inactive", True)
    assert sdp.audio is None  # port 0 = rejected stream
    assert sdp.attributes == [("rtcp-xr", "rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics")]


def test_video_lines_and_nse() -> None:
    sdp = sdp_of("invite_video.sip")  # DTMFsipinfo.pcap (Ekiga)
    audio, video = sdp.media
    assert audio.rtpmap[8] == RtpMap("PCMA", 8000, 1)
    assert audio.rtpmap[120] == RtpMap("NSE", 8000)
    assert audio.fmtp == {101: "0-16,32,36", 120: "192-193"}
    assert (video.media, video.port, video.payload_types) == ("video", 5094, [119, 31])
    assert video.rtpmap == {119: RtpMap("theora", 90000), 31: RtpMap("h261", 90000)}
    assert video.fmtp[31] == "CIF=1;QCIF=1"
    assert video.direction == "sendrecv"
    assert sdp.audio is audio


def test_t38_image_line() -> None:
    sdp = sdp_of("invite_t38.sip")  # ndpi_FAX-Call-t38 re-INVITE to T.38
    (image,) = sdp.media
    assert (image.media, image.port, image.proto, image.formats) == ("image", 16756, "udptl", ["t38"])
    assert image.payload_types == []
    assert sdp.audio is None


def test_srtp_crypto_rtcp_and_media_connection() -> None:
    sdp = sdp_of("invite_srtp.sip")  # voipshark SRTP call (MicroSIP)
    assert sdp.connection is None
    assert sdp.bandwidth == {"AS": 84}
    assert sdp.attributes == [("X-nat", "0")]
    audio = sdp.audio
    assert audio is not None
    assert audio.proto == "RTP/SAVP"
    assert audio.connection == "192.168.20.132" and audio.address(sdp) == "192.168.20.132"
    assert audio.bandwidth == {"TIAS": 64000}
    assert audio.rtcp == (4001, "192.168.20.132")
    assert audio.crypto == [
        "1 AES_256_CM_HMAC_SHA1_80 inline:R+USwMt3d0q/xyfdSq9aK+vrdTf0x6n6SOcC4E6AZmL5vqEzRofmJm7xWsV9Eg==",
        "2 AES_256_CM_HMAC_SHA1_32 inline:pb8SO+G4GE9RbroFPELfQM+hteg19T9jm6NPXMC9cn21/2h2hCFjEcJg/6ZduQ==",
        "3 AES_CM_128_HMAC_SHA1_80 inline:D2YmkapsLg7GhQkROWl3wLJxRXuRBhnHYVjq4nsO",
        "4 AES_CM_128_HMAC_SHA1_32 inline:IyxCvTVuJp0GBLldSiDoLDmoThje4412XyDRa1G7",
    ]
    assert audio.rtpmap[123] == RtpMap("opus", 48000, 2)
    assert bytes(sdp) == body_of("invite_srtp.sip")


def test_ipv6_connection() -> None:
    sdp = sdp_of("invite_ipv6.sip")
    assert sdp.connection == "fe80:0:0:0:21a:a0ff:fe07:32e0"
    assert sdp.origin is not None and sdp.origin.addrtype == "IP6"
    assert sdp.audio is not None and sdp.audio.codec(0) == RtpMap("pcmu", 8000, 1)


def test_multicast_suffix_port_count_and_bare_lf() -> None:
    text = "v=0\no=- 1 1 IN IP4 h\ns=x\nc=IN IP4 224.2.1.1/127/3\nt=0 0\nm=audio 49170/2 RTP/AVP 0 96\n"
    sdp = SessionDescription.parse(text)
    assert sdp.connection == "224.2.1.1"
    assert (sdp.media[0].port, sdp.media[0].port_count) == (49170, 2)
    assert SessionDescription.parse(bytes(sdp)) == sdp


def test_lenient_lines_are_noted() -> None:
    text = (
        b"v=0\r\ns=x\r\ngarbage\r\nm=audio 1 RTP/AVP 0 8\r\na=rtpmap:zz PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA\r\na=ptime:abc\r\na=rtcp:x\r\nt=0 0\r\n"
    )
    sdp = SessionDescription.parse(text)
    audio = sdp.media[0]
    assert audio.rtpmap == {} and audio.ptime is None and audio.rtcp is None
    assert audio.codec(8) == RtpMap("PCMA", 8000)
    assert len(sdp.notes) == 6


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"", SdpErrorReason.EMPTY),
        (b"\r\n\r\n", SdpErrorReason.EMPTY),
        (b"s=x\r\nv=0\r\n", SdpErrorReason.NOT_SDP),
        (b"v=1\r\n", SdpErrorReason.BAD_VERSION),
        (b"v=0\r\nm=audio x RTP/AVP 0\r\n", SdpErrorReason.BAD_MEDIA),
        (b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n", SdpErrorReason.BAD_MEDIA),
        (b"v=0\r\nm=audio 5000/0 RTP/AVP 0\r\n", SdpErrorReason.BAD_MEDIA),
        (b"v=0\r\nm=audio\r\n", SdpErrorReason.BAD_MEDIA),
    ],
)
def test_errors(text: bytes, reason: SdpErrorReason) -> None:
    with pytest.raises(SdpParseError) as info:
        SessionDescription.parse(text)
    assert info.value.reason is reason


def test_bad_media_offset() -> None:
    with pytest.raises(SdpParseError) as info:
        SessionDescription.parse(b"v=0\r\ns=-\r\nm=audio x RTP/AVP 0\r\n")
    assert info.value.offset == 10


@pytest.mark.parametrize("name", WITH_SDP)
def test_round_trip_and_truncations(name: str) -> None:
    body = body_of(name)
    sdp = SessionDescription.parse(body)
    assert SessionDescription.parse(bytes(sdp)) == sdp
    assert SessionDescription.parse(body.decode("utf-8")) == sdp
    assert SessionDescription.parse(body + b"\r\n\r\n") == sdp  # trailing blank lines
    for i in range(len(body)):
        try:
            SessionDescription.parse(body[:i])
        except SdpParseError:
            pass


def test_static_table() -> None:
    assert {pt: str(m) for pt, m in STATIC_PAYLOAD_TYPES.items()} == {
        0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 5: "DVI4/8000", 6: "DVI4/16000", 7: "LPC/8000",
        8: "PCMA/8000", 9: "G722/8000", 10: "L16/44100/2", 11: "L16/44100", 12: "QCELP/8000", 13: "CN/8000",
        14: "MPA/90000", 15: "G728/8000", 18: "G729/8000",
    }  # fmt: skip
    assert RtpMap.parse("opus/48000/2") == RtpMap("opus", 48000, 2)
    for bad in ("", "PCMU", "PCMU/x", "PCMU/0", "a/1/2/3", "/8000"):
        assert RtpMap.parse(bad) is None


SAMPLES = [body_of(name) for name in WITH_SDP]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise(data: bytes) -> None:
    _check(data)
    _check(b"v=0\r\n" + data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_bodies_parse_or_raise(sample: bytes, data: st.DataObject) -> None:
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        byte = data.draw(st.sampled_from([10, 13, 32, 47, 58, 61, 48, 57, 0xC3, 0xFF, 0x85, 97]))
        if data.draw(st.booleans()):
            buf[pos] = byte
        else:
            buf.insert(pos, byte)
    _check(bytes(buf))


def _check(data: bytes) -> None:
    try:
        sdp = SessionDescription.parse(data)
    except SdpParseError:
        return
    assert SessionDescription.parse(bytes(sdp)) == sdp
    for m in sdp.media:
        _ = (m.payload_types, m.is_on_hold, m.address(sdp), [m.codec(pt) for pt in m.payload_types])
