"""Hypothesis properties for the parsers the per-module suites did not cover (or covered only in part).

Any bytes either parse or raise the module's one error; parse then serialise round-trips where a
serialiser exists; stream framers stay under their caps whatever the chunking.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.asterisk.ami import AmiFramer, AmiMessage, AmiParseError
from adapters.asterisk.ari import AriParseError, parse_event
from adapters.freeswitch.esl import EslBuffer, EslEvent, EslParseError, frame_event_plain, parse_event_plain
from capture.netlayers import PROTO_TCP, Datagram
from capture.sip import SipMessage
from capture.tcp import (
    MAX_PENDING_SEGMENTS,
    MAX_WS_BUFFER,
    TcpSipReassembler,
    WebSocketError,
    maybe_extract_ws_frame,
)
from vcon_capture.config import load_config
from vcon_capture.errors import ConfigError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
_value = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


# -- ESL ---------------------------------------------------------------------------------------------


@SETTINGS
@given(st.dictionaries(_name.filter(lambda n: n not in ("Content-Length", "Event-Name")), _value, max_size=8),
       _value.filter(bool), st.one_of(st.none(), st.text(min_size=1, max_size=60)))
def test_esl_plain_event_round_trips(headers: dict[str, str], name: str, body: str | None) -> None:
    event = EslEvent(headers={"Event-Name": name, **headers}, body=body)
    again = parse_event_plain(bytes(event))
    assert again.headers == event.headers and again.body == event.body
    (msg,) = EslBuffer().feed(frame_event_plain(event))
    assert msg.event == again


@SETTINGS
@given(st.binary(max_size=800), st.integers(1, 97), st.integers(64, 1024))
def test_esl_buffer_capped_whatever_the_chunking(data: bytes, step: int, cap: int) -> None:
    buf = EslBuffer(max_size=cap)
    try:
        for i in range(0, len(data), step):
            buf.feed(data[i : i + step])
            assert len(buf) <= cap + step
    except EslParseError:
        pass


# -- AMI ---------------------------------------------------------------------------------------------


_ami_key = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,15}", fullmatch=True)
_ami_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)


@SETTINGS
@given(st.sampled_from(["Event", "Response", "Action"]), _ami_value.filter(bool),
       st.lists(st.tuples(_ami_key, _ami_value), max_size=8), st.integers(1, 50))
def test_ami_message_round_trips_in_any_chunks(kind: str, name: str, pairs: list[tuple[str, str]], step: int) -> None:
    if kind == "Response" and name.lower() == "follows":
        name = "Success"
    msg = AmiMessage(((kind, name), *pairs))
    wire = b"Asterisk Call Manager/5.0.1\r\n" + bytes(msg) + bytes(msg)
    framer = AmiFramer()
    got = []
    for i in range(0, len(wire), step):
        framer.feed(wire[i : i + step])
        while (m := framer.next_message()) is not None:
            got.append(m)
    assert [m.fields for m in got[1:] if isinstance(m, AmiMessage)] == [msg.fields, msg.fields]


@SETTINGS
@given(st.binary(max_size=600), st.integers(1, 40), st.integers(16, 256))
def test_ami_framer_bounded_and_makes_progress(data: bytes, step: int, cap: int) -> None:
    framer = AmiFramer(max_message_bytes=cap, expect_greeting=False)
    for i in range(0, len(data), step):
        framer.feed(data[i : i + step])
        for _ in range(len(data) + 2):
            try:
                if framer.next_message() is None:
                    break
            except AmiParseError:
                continue
        else:
            raise AssertionError("next_message loops without consuming")
        assert framer.buffered <= cap + step + 3


# -- ARI ---------------------------------------------------------------------------------------------


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=20),
       st.sampled_from(["StasisStart", "ChannelDestroyed", "ChannelStateChange", "RecordingFinished",
                        "ChannelEnteredBridge", "Dial", "ChannelVarset"]))
def test_ari_any_shape_under_a_known_type(value: object, kind: str) -> None:
    for doc in ({"type": kind, "channel": value, "timestamp": value},
                {"type": kind, "recording": value, "bridge": value, "args": value, "peer": value}):
        try:
            parse_event(json.dumps(doc).encode())
        except AriParseError:
            pass


@SETTINGS
@given(st.integers(0, 6000))
def test_ari_deep_nesting(depth: int) -> None:
    try:
        parse_event(b'{"type": "X", "a": ' + b"[" * depth + b"]" * depth + b"}")
    except AriParseError:
        pass


# -- config ------------------------------------------------------------------------------------------


_yaml_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                         st.text(max_size=12), st.sampled_from(["127.0.0.1:8080", "/tmp/x", "redis://h", "eth0",
                                                                  "2001-99-99", "1e999", "ENV_X"]))
_sections = ["outputs", "capture", "http", "spool", "state_dir", "media", "signing", "log", "domain",
             "lawful_basis", "twilio", "freeswitch", "asterisk", "interfaces", "timeouts", "listen", "max_body",
             "esl", "cdr", "ami", "ari", "recordings", "roots", "password_env", "url", "dir", "token_env",
             "watch", "max_calls", "shutdown_grace", "account_sid", "auth_token_env", "public_url"]
_yaml_tree = st.recursive(_yaml_scalar, lambda kids: st.lists(kids, max_size=3)
                          | st.dictionaries(st.sampled_from(_sections), kids, max_size=5), max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(tree=_yaml_tree)
def test_config_any_tree_loads_or_raises_config_error(tmp_path: Path, tree: object) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        load_config(path)
    except ConfigError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_config_any_bytes_load_or_raise_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"outputs: [/tmp/x]\n" + data)
    try:
        load_config(path)
    except ConfigError:
        pass


# -- WebSocket frames and TCP reassembly ----------------------------------------------------------------


def _ws(opcode: int, payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([0x80 | opcode, mbit | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, mbit | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if mask else head + payload


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 15), st.binary(max_size=300), st.sampled_from([b"", b"\x01\x02\x03\x04"])),
                max_size=5), st.integers(1, 64))
def test_ws_frames_round_trip_in_any_chunks(frames: list[tuple[int, bytes, bytes]], step: int) -> None:
    wire = b"".join(_ws(op, p, m) for op, p, m in frames)
    buf = bytearray()
    got = []
    for i in range(0, len(wire), step):
        buf += wire[i : i + step]
        while (f := maybe_extract_ws_frame(buf)) is not None:
            got.append(f)
    assert got == [(op, p) for op, p, _ in frames] and not buf


@SETTINGS
@given(st.binary(max_size=300))
def test_ws_any_bytes_frame_or_raise(data: bytes) -> None:
    buf = bytearray(data)
    try:
        while maybe_extract_ws_frame(buf) is not None:
            pass
    except WebSocketError:
        pass


class _Sink:
    def __init__(self) -> None:
        self.messages: list[SipMessage] = []

    def handle_sip_message(self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        self.messages.append(msg)

    def advance(self, now: float) -> None:
        pass


_INVITE = (b"INVITE sip:b@h SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nFrom: <sip:a@h>;tag=1\r\n"
           b"To: <sip:b@h>\r\nContent-Length: 4\r\n\r\nabcd")


@SETTINGS
@given(st.integers(1, 3), st.lists(st.integers(1, 40), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_tcp_reassembly_any_segmentation_and_order(copies: int, cuts: list[int], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    stream = _INVITE * copies
    segments = []
    pos, i = 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        segments.append((1000 + pos, stream[pos : pos + n]))
        pos += n
        i += 1
    order = segments[:]
    rnd.shuffle(order)
    if len(order) > MAX_PENDING_SEGMENTS:
        order = segments  # more holes than the reassembler keeps: in order only
    sink = _Sink()
    reasm = TcpSipReassembler(sink)
    reasm.handle(Datagram(0.0, PROTO_TCP, "10.0.0.1", 5060, "10.0.0.2", 5060, b"", 999, 0x02))
    for seq, payload in order + order[:3]:  # and a few retransmissions
        reasm.handle(Datagram(0.0, PROTO_TCP, "10.0.0.1", 5060, "10.0.0.2", 5060, payload, seq, 0x18))
    assert [m.call_id for m in sink.messages] == ["c1"] * copies
    assert [m.body for m in sink.messages] == [b"abcd"] * copies


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 0x1FF), st.integers(0, 0xFFFFFFFF),
                          st.binary(max_size=200)), max_size=30))
def test_tcp_reassembler_never_raises_and_stays_capped(segments: list[tuple[int, int, int, bytes]]) -> None:
    reasm = TcpSipReassembler(_Sink())
    for flow, flags, seq, payload in segments:
        reasm.handle(Datagram(0.0, PROTO_TCP, f"10.0.0.{flow}", 5060, "10.0.0.9", 5060 + flow % 2, payload, seq,
                              flags))
        for f in reasm.flows.values():
            assert len(f.pending) <= MAX_PENDING_SEGMENTS and len(f.ws_buffer) <= MAX_WS_BUFFER
