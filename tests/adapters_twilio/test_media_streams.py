"""Media Streams messages, the session state machine, μ-law decoding and the stereo WAV writer."""

from __future__ import annotations

import base64
import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.twilio.media_streams import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaStreamError,
    Placement,
    Start,
    StereoWavWriter,
    Stop,
    StreamDtmf,
    StreamEnded,
    StreamErrorReason,
    StreamSession,
    StreamStarted,
    parse_message,
    repair_wav,
    ulaw_decode,
)
from tests.adapters_twilio.support import TWILIO, dominant, session_lines

MZ, CA, AC = "MZ" + "0" * 31 + "1", "CA" + "0" * 31 + "1", "AC" + "0" * 31 + "1"


def test_corpus_session_parses_field_by_field() -> None:
    msgs = [parse_message(line) for line in session_lines()]
    assert msgs[0] == Connected(protocol="Call", version="1.0.0")
    assert msgs[1] == Start(stream_sid=MZ, call_sid=CA, account_sid=AC, tracks=("inbound", "outbound"),
                            custom_parameters=(("FirstName", "Jane"), ("LastName", "Doe"), ("RemoteParty", "Bob")),
                            encoding="audio/x-mulaw", sample_rate=8000, channels=1, sequence_number=1)
    media = [m for m in msgs if isinstance(m, Media)]
    assert len(media) == 100
    assert media[0].track == "inbound" and media[0].timestamp == 5 and media[0].chunk == 1
    assert media[0].sequence_number == 2 and len(media[0].payload) == 160 and media[0].stream_sid == MZ
    assert media[-1].track == "outbound" and media[-1].timestamp == 985 and media[-1].chunk == 50
    assert repr(media[0]) == "Media(track=inbound, ts=5, 160 bytes)"
    assert msgs[-3] == Dtmf(stream_sid=MZ, track="inbound_track", digit="1", sequence_number=102)
    assert msgs[-2] == Mark(stream_sid=MZ, name="my label", sequence_number=103)
    assert msgs[-1] == Stop(stream_sid=MZ, call_sid=CA, sequence_number=104)
    # the same message as bytes parses the same
    assert parse_message(session_lines()[1].encode()) == msgs[1]


def test_messages_to_twilio_are_known_or_rejected() -> None:
    lines = (TWILIO / "CONSTRUCTED_media_streams_messages_to_twilio.jsonl").read_text().splitlines()
    with pytest.raises(MediaStreamError) as err:
        parse_message(lines[0])  # outgoing media has no timestamp: it cannot be placed
    assert err.value.reason is StreamErrorReason.MISSING_FIELD and err.value.detail == "timestamp"
    assert isinstance(parse_message(lines[1]), Mark)
    with pytest.raises(MediaStreamError) as err:
        parse_message(lines[2])  # "clear" only goes to Twilio
    assert err.value.reason is StreamErrorReason.UNKNOWN_EVENT


def test_truncations_and_trailing_data_raise_our_error() -> None:
    line = session_lines()[2]
    for cut in range(len(line)):
        with pytest.raises(MediaStreamError):
            parse_message(line[:cut])
    with pytest.raises(MediaStreamError) as err:
        parse_message(line + "}")
    assert err.value.reason is StreamErrorReason.BAD_JSON and err.value.offset == len(line)


@pytest.mark.parametrize(("text", "reason"), [
    ("[]", StreamErrorReason.NOT_AN_OBJECT),
    ('{"event": ["media"]}', StreamErrorReason.UNKNOWN_EVENT),
    ('{"event": "media"}', StreamErrorReason.MISSING_FIELD),
    ('{"event": "media", "media": {"track": "sideways", "timestamp": "0", "payload": ""}}', StreamErrorReason.BAD_FIELD),
    ('{"event": "media", "media": {"timestamp": "-5", "payload": ""}}', StreamErrorReason.BAD_FIELD),
    ('{"event": "media", "media": {"timestamp": "0", "payload": "!!"}}', StreamErrorReason.BAD_FIELD),
    ('{"event": "dtmf", "dtmf": {"digit": "12"}}', StreamErrorReason.BAD_FIELD),
    ('{"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1"}}', StreamErrorReason.BAD_FIELD),
    ('{"event": "start", "start": {"mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}}',
     StreamErrorReason.UNSUPPORTED_FORMAT),
])
def test_bad_messages(text: str, reason: StreamErrorReason) -> None:
    with pytest.raises(MediaStreamError) as err:
        parse_message(text)
    assert err.value.reason is reason
    with pytest.raises(MediaStreamError) as err:
        parse_message(b"\xff" + text.encode())
    assert err.value.reason is StreamErrorReason.BAD_UTF8 and err.value.offset == 0
    with pytest.raises(MediaStreamError) as err:
        parse_message("x" * 70000)
    assert err.value.reason is StreamErrorReason.TOO_LARGE


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(["event", "media", "start", "dtmf", "payload", "track",
                                                   "timestamp", "digit", "streamSid", "callSid", "tracks"]),
                                  c, max_size=5), max_leaves=20).map(json.dumps)))
def test_any_input_parses_or_raises_our_error(data: str | bytes) -> None:
    try:
        parse_message(data)
    except MediaStreamError:
        pass


def test_ulaw_matches_ffmpeg_decoder() -> None:
    allbytes = bytes(range(256))
    codec = av.CodecContext.create("pcm_mulaw", "r")
    codec.sample_rate = 8000
    codec.layout = "mono"
    frames = codec.decode(av.Packet(allbytes))
    reference = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(ulaw_decode(allbytes), reference)


def test_session_orders_messages_and_places_audio() -> None:
    msgs = [parse_message(line) for line in session_lines()]
    session = StreamSession()
    with pytest.raises(MediaStreamError) as err:
        session.handle(msgs[2], 100.0)  # media before start
    assert err.value.reason is StreamErrorReason.OUT_OF_ORDER
    effects = [e for m in msgs for e in session.handle(m, 100.0)]
    assert isinstance(effects[0], StreamStarted) and effects[0].at == 100.0
    placements = [e for e in effects if isinstance(e, Placement)]
    assert placements[0].channel == 0 and placements[0].index == 40 and len(placements[0].samples) == 160
    assert placements[1].channel == 1 and placements[1].index == 40
    dtmf = [e for e in effects if isinstance(e, StreamDtmf)]
    assert dtmf == [StreamDtmf(stream_sid=MZ, call_sid=CA, track="inbound_track", digit="1", at=100.985)]
    assert effects[-1] == StreamEnded(stream_sid=MZ, call_sid=CA, at=100.0, duration=1.005, abrupt=False)
    with pytest.raises(MediaStreamError):
        session.handle(msgs[2], 101.0)  # media after stop
    assert session.abort(101.0) == []


def test_session_abort_and_cap() -> None:
    session = StreamSession(max_seconds=1.0)
    session.handle(parse_message(session_lines()[1]), 5.0)
    media = Media(stream_sid=MZ, track="inbound", chunk=1, timestamp=990, payload=b"\xff" * 160)
    with pytest.raises(MediaStreamError) as err:
        session.handle(media, 5.0)
    assert err.value.reason is StreamErrorReason.BEYOND_CAP
    assert session.abort(6.0) == [StreamEnded(stream_sid=MZ, call_sid=CA, at=6.0, duration=0.0, abrupt=True)]


def test_writer_places_by_timestamp_with_silent_gaps(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    writer = StereoWavWriter(path)
    a = np.arange(1, 161, dtype=np.int16)
    b = -np.arange(1, 161, dtype=np.int16)
    writer.place(Placement(channel=1, index=800, samples=b))  # outbound first, later in time
    writer.place(Placement(channel=0, index=0, samples=a))
    writer.place(Placement(channel=0, index=800, samples=a))
    writer.place(Placement(channel=0, index=800, samples=a))  # a duplicate changes nothing
    assert writer.close() == 960 / 8000
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 8000, 960)
        pcm = np.frombuffer(w.readframes(960), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:160, 0], a) and not pcm[:160, 1].any()
    assert not pcm[160:800].any()
    assert np.array_equal(pcm[800:, 0], a) and np.array_equal(pcm[800:, 1], b)


def test_corpus_tones_land_on_their_channels(tmp_path: Path) -> None:
    session, writer = StreamSession(), StereoWavWriter(tmp_path / "c.wav")
    for line in session_lines():
        for effect in session.handle(parse_message(line), 0.0):
            if isinstance(effect, Placement):
                writer.place(effect)
    writer.close()
    with wave.open(str(tmp_path / "c.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert pcm.shape == (8040, 2) and not pcm[:40].any()
    assert dominant(pcm[40:, 0]) == pytest.approx(440, abs=5)
    assert dominant(pcm[40:, 1]) == pytest.approx(1000, abs=5)


def test_repair_after_crash(tmp_path: Path) -> None:
    path = tmp_path / "r.wav"
    writer = StereoWavWriter(path)
    writer.place(Placement(channel=0, index=0, samples=np.ones(800, dtype=np.int16)))
    writer.flush()  # the process dies here: header still says 0 frames
    with open(path, "ab") as fh:
        fh.write(b"\x01")  # a torn partial frame
    assert repair_wav(path) == 0.1
    with wave.open(str(path)) as w:
        assert w.getnframes() == 800
    writer.close()


def test_payload_base64_roundtrip() -> None:
    payload = bytes(range(160))
    msg = {"event": "media", "media": {"track": "outbound", "timestamp": 20, "payload": base64.b64encode(payload).decode()}}
    parsed = parse_message(json.dumps(msg))
    assert isinstance(parsed, Media) and parsed.payload == payload and parsed.timestamp == 20
