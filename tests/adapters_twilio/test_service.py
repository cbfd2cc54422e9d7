"""The Twilio service on a real aiohttp server, driven by signed requests shaped like the corpus."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import structlog
from aiohttp import WSServerHandshakeError

from adapters.twilio.config import TwilioConfig
from adapters.twilio.service import TwilioService
from conversation.assembler import AssemblyOptions, assemble
from conversation.vcon import b64url
from tests.adapters_twilio.conftest import Harness
from tests.adapters_twilio.support import (
    ACCOUNT,
    PUBLIC,
    RECORDING,
    STREAM_STATUS,
    TOKEN,
    VOICE,
    FakeTwilioApi,
    dialog_audio,
    dominant,
    form_lines,
    session_lines,
    sid,
    signed_headers,
    stereo_mp3,
    stereo_wav,
    tone,
    ulaw_encode,
    validate_vcon,
    with_fields,
)
from vcon_capture.errors import ConfigError
from vcon_capture.sink import CollectingSink

Make = Callable[..., Awaitable[Harness]]
STATUS, REC, STREAM = "/twilio/voice/status", "/twilio/voice/recording", "/twilio/voice/stream-status"
RE1, RE2 = "RE00000000000000000000000000000001", "RE00000000000000000000000000000002"
CA1 = "CA00000000000000000000000000000001"


def vcon_of(h: Harness, index: int = 0) -> dict[str, Any]:
    vcon = assemble(h.sink.finished[index], AssemblyOptions(), now=h.clock())
    validate_vcon(vcon)
    return vcon


def party_index(vcon: dict[str, Any], **match: str) -> int:
    for i, p in enumerate(vcon["parties"]):
        if all(p.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no party {match} in {vcon['parties']}")


async def replay_session(h: Harness, lines: list[str]) -> None:
    ws = await h.ws_connect()
    for line in lines:
        await ws.send_str(line)
    await ws.close()


# -- the corpus, in its order and shape --------------------------------------------------------


async def test_corpus_call_becomes_one_complete_vcon(harness: Make, fake_api: FakeTwilioApi) -> None:
    fake_api.media[f"{RE1}.wav"] = stereo_wav(tone(440, 2.0), tone(1000, 2.0))
    h = await harness()
    voice = form_lines(VOICE)
    recs = form_lines(RECORDING)
    streams = form_lines(STREAM_STATUS)
    for pairs in voice[:3]:  # initiated, ringing, in-progress
        assert await h.post(STATUS, pairs) == 204
    assert await h.post(STREAM, streams[0]) == 204  # stream-started
    assert await h.post(STREAM, streams[2]) == 204  # stream-error of the second stream
    await replay_session(h, session_lines())
    assert await h.post(REC, recs[0]) == 204  # recording in-progress
    assert await h.post(STREAM, streams[1]) == 204  # stream-stopped
    assert await h.post(STATUS, voice[4]) == 204  # the <Dial> child leg: no-answer
    assert await h.post(STATUS, voice[3]) == 204  # parent completed
    assert h.sink.finished == []  # the announced recording is still owed
    local = fake_api.recording_url(RE1)
    assert await h.post(REC, with_fields(recs[1], RecordingUrl=local)) == 204
    assert await h.post(REC, recs[2]) == 204  # absent (ErrorCode 16101)
    await h.until(lambda: len(h.sink.finished) == 1)

    assert fake_api.requests[0][0] == f"{RE1}.wav"
    vcon = vcon_of(h)
    caller = party_index(vcon, tel="+15017122661")
    callee = party_index(vcon, tel="+15558675310")
    assert (caller, callee) == (0, 1)
    assert len(vcon["parties"]) == 2
    dialogs = vcon["dialog"]
    # parent leg: the fetched recording, the stream recording, and the recording-set holding both
    assert [d["type"] for d in dialogs] == ["recording", "recording", "recording-set", "incomplete"]
    rset, child = dialogs[2], dialogs[3]
    # members ordered by start; the stream began when the websocket did (test clock), the API one at 19:22:08
    by_file = {d["filename"]: d for d in dialogs[:2]}
    api_rec, stream_rec = by_file[f"{RE1}.wav"], by_file["MZ00000000000000000000000000000001.wav"]
    assert rset["recordings"] == [0, 1]
    assert api_rec["recording_set"] == 2 and stream_rec["recording_set"] == 2
    # outbound-api call: Twilio receives the callee (channel 0), sends the caller's side (channel 1)
    assert api_rec["parties"] == [callee, caller]
    assert api_rec["start"] == "2024-06-19T19:22:08.000Z"
    assert api_rec["mediatype"] == "audio/x-wav"
    audio, rate = dialog_audio(api_rec)
    assert rate == 8000 and audio.shape == (16000, 2)
    assert dominant(audio[:, 0]) == pytest.approx(440, abs=5)
    assert dominant(audio[:, 1]) == pytest.approx(1000, abs=5)
    assert stream_rec["parties"] == [callee, caller]
    s_audio, _ = dialog_audio(stream_rec)
    assert dominant(s_audio[:, 0]) == pytest.approx(440, abs=5)
    assert dominant(s_audio[:, 1]) == pytest.approx(1000, abs=5)
    # DTMF "1" on the inbound track: pressed by the far end of the outbound-api call
    assert rset["party_history"][0]["event"] == "keydown"
    assert rset["party_history"][0]["button"] == "1"
    assert rset["party_history"][0]["party"] == callee
    assert rset["start"] == "2024-06-19T19:22:07.000Z" and rset["duration"] == 108.0
    assert child["disposition"] == "no-answer"
    assert child["parties"] == [caller, callee]
    reports = [a["body"] for a in vcon["analysis"] if a.get("product") == "vcon-capture/twilio"]
    events = {r["event"]: r for r in reports}
    assert events["recording-not-available"]["error_code"] == 16101
    assert events["stream-error"]["reason"] == "Stream - WebSocket - Connection Refused"
    assert "recording-wait-expired" not in events
    notes = next(a["body"] for a in vcon["analysis"] if a.get("schema") == "vcon-capture-notes")
    assert notes["legs"][CA1]["twilio"]["streams"]["MZ00000000000000000000000000000001"]["custom_parameters"] == {
        "FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
    # rendered files were ours and are gone once in the vCon
    assert list(h.media_dir.iterdir()) == []
    metrics = h.service.metrics() if h.service else {}
    assert metrics["conversations_emitted"] == 1 and metrics["refused_requests"] == 0


# -- signatures --------------------------------------------------------------------------------


async def test_forged_unsigned_and_misdirected_requests_get_403(harness: Make) -> None:
    h = await harness()
    pairs = form_lines(VOICE)[0]
    assert await h.post(STATUS, pairs, headers={"Content-Type": "application/x-www-form-urlencoded"}) == 403
    forged = signed_headers(PUBLIC + STATUS, pairs, token="0" * 32)
    assert await h.post(STATUS, pairs, headers=forged) == 403
    # signed for another route: the URL is part of the signature
    assert await h.post(REC, pairs, headers=signed_headers(PUBLIC + STATUS, pairs)) == 403
    # a tampered body
    tampered = with_fields(pairs, To="+19995550100")
    assert await h.post(STATUS, tampered, headers=signed_headers(PUBLIC + STATUS, pairs)) == 403
    # a SharedKey-signed request while no shared key is configured
    shared = {**signed_headers(PUBLIC + STATUS, pairs), "X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_SHA256"}
    assert await h.post(STREAM, pairs, headers=shared) == 403
    with pytest.raises(WSServerHandshakeError) as err:
        await h.ws_connect(headers={})
    assert err.value.status == 403
    with pytest.raises(WSServerHandshakeError) as err:
        await h.ws_connect(headers=signed_headers("wss://hooks.example.com/twilio/other", []))
    assert err.value.status == 403
    # the port-qualified form Twilio sometimes signs is accepted
    assert await h.post(STATUS, pairs, headers=signed_headers("https://hooks.example.com:443" + STATUS, pairs)) == 204
    assert h.service is not None
    m = h.service.metrics()
    assert m["refused_requests"] == 7
    assert m["refused_missing-signature"] == 2
    assert m["refused_bad-signature"] == 4
    assert m["refused_shared-key-not-configured"] == 1
    assert m["machine_call_status_callbacks"] == 1  # only the good one reached the machine


async def test_signed_but_invalid_body_is_400(harness: Make) -> None:
    h = await harness()
    pairs = with_fields(form_lines(VOICE)[0], CallSid="CA../../etc/passwd")
    assert await h.post(STATUS, pairs) == 400
    assert h.service is not None and h.service.metrics()["errors_call_status_bad-value"] == 1


# -- recordings --------------------------------------------------------------------------------


def inbound_dial_call(n: int, recording_url: str | None) -> list[tuple[str, list[tuple[str, str]]]]:
    """An inbound call to a Twilio number that <Dial>s an agent and records dual-channel (DialVerb)."""
    base = form_lines(VOICE)[0]
    parent, child, rec = sid("CA", 0x100 + n), sid("CA", 0x200 + n), sid("RE", 0x300 + n)

    def status(call: str, status: str, ts: str, seq: int, **more: str) -> list[tuple[str, str]]:
        fields = {"CallSid": call, "CallStatus": status, "Timestamp": ts, "SequenceNumber": str(seq)}
        if call == parent:
            fields.update(From="+14155550101", To="+18005550100", Direction="inbound", Caller="+14155550101",
                          Called="+18005550100", CallerName="JANE DOE", StirVerstat="TN-Validation-Passed-A",
                          ForwardedFrom="+18005550199")
        else:
            fields.update(From="+14155550101", To="+12125550123", Direction="outbound-dial", ParentCallSid=parent,
                          Caller="+14155550101", Called="+12125550123")
        return with_fields(base, **fields, **more)

    recs = form_lines(RECORDING)
    rec_fields = {"CallSid": parent, "RecordingSid": rec}
    items = [
        (STATUS, status(parent, "ringing", "Wed, 19 Jun 2024 19:30:00 +0000", 0)),
        (STATUS, status(parent, "in-progress", "Wed, 19 Jun 2024 19:30:01 +0000", 1)),
        (STATUS, status(child, "initiated", "Wed, 19 Jun 2024 19:30:02 +0000", 0)),
        (STATUS, status(child, "ringing", "Wed, 19 Jun 2024 19:30:03 +0000", 1)),
        (STATUS, status(child, "in-progress", "Wed, 19 Jun 2024 19:30:06 +0000", 2)),
        (REC, with_fields(recs[0], **rec_fields, RecordingStartTime="Wed, 19 Jun 2024 19:30:06 +0000")),
        (STATUS, status(child, "completed", "Wed, 19 Jun 2024 19:31:06 +0000", 3, CallDuration="60",
                        SipResponseCode="200")),
        (STATUS, status(parent, "completed", "Wed, 19 Jun 2024 19:31:07 +0000", 2, CallDuration="66",
                        SipResponseCode="200")),
    ]
    done = with_fields(recs[1], **rec_fields, RecordingStartTime="Wed, 19 Jun 2024 19:30:06 +0000",
                       RecordingDuration="60", RecordingUrl=recording_url)
    items.append((REC, done))
    return items


async def test_duplicates_and_out_of_order_give_one_vcon(harness: Make, fake_api: FakeTwilioApi) -> None:
    rec = sid("RE", 0x301)
    fake_api.media[f"{rec}.wav"] = stereo_wav(tone(440, 1.0), tone(1000, 1.0))
    fake_api.fail_first[f"{rec}.wav"] = 2  # two 503s, then the file: retried
    h = await harness()
    items = inbound_dial_call(1, fake_api.recording_url(rec))
    shuffled = [items[7], items[4], items[0], items[8], items[2], items[1], items[6], items[3], items[5]]
    for path, pairs in shuffled + items[::3]:  # out of order, then retries of some
        assert await h.post(path, pairs) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    for path, pairs in items[-2:]:  # late retries after the vCon went out
        assert await h.post(path, pairs) == 204
    await asyncio.sleep(0.5)
    assert len(h.sink.finished) == 1
    assert len([r for r in fake_api.requests if r[0] == f"{rec}.wav"]) == 3

    vcon = vcon_of(h)
    parties = vcon["parties"]
    assert parties[0] == {"tel": "+14155550101", "name": "JANE DOE", "validation": "TN-Validation-Passed-A",
                          "role": "caller"}
    assert parties[1] == {"tel": "+18005550100", "forwarded_from": "+18005550199", "role": "callee"}
    assert parties[2] == {"tel": "+12125550123", "role": "dialed"}
    parent_d, child_d = vcon["dialog"]
    assert parent_d["type"] == "recording" and parent_d["parties"] == [0, 2]  # caller ch0, agent ch1
    assert parent_d["start"] == "2024-06-19T19:30:06.000Z" and parent_d["duration"] == 1.0
    audio, _ = dialog_audio(parent_d)
    assert dominant(audio[:, 0]) == pytest.approx(440, abs=5)
    assert dominant(audio[:, 1]) == pytest.approx(1000, abs=5)
    assert child_d == {"type": "recording", "start": "2024-06-19T19:30:06.000Z", "duration": 60.0, "parties": [0, 2]}
    assert h.service is not None
    m = h.service.metrics()
    assert m["machine_duplicate_callbacks"] >= 3
    assert m["machine_late_callbacks"] == 2
    assert m["machine_recordings_fetched"] == 1


@pytest.mark.parametrize(("status", "disposition", "code"), [
    ("busy", "busy", "486"), ("no-answer", "no-answer", "487"), ("canceled", "hung-up", "487"),
    ("failed", "failed", "503"),
])
async def test_calls_that_never_connected(harness: Make, status: str, disposition: str, code: str) -> None:
    h = await harness()
    voice = form_lines(VOICE)
    call = sid("CA", 0x900)
    for pairs in voice[:2]:
        assert await h.post(STATUS, with_fields(pairs, CallSid=call)) == 204
    final = with_fields(voice[3], CallSid=call, CallStatus=status, SipResponseCode=code, CallDuration="0",
                        Timestamp="Wed, 19 Jun 2024 19:22:31 +0000")
    assert await h.post(STATUS, final) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    vcon = vcon_of(h)
    assert vcon["dialog"] == [{
        "type": "incomplete", "start": "2024-06-19T19:22:01.000Z", "duration": 30.0, "parties": [0, 1],
        "disposition": disposition,
    }]
    assert [p["tel"] for p in vcon["parties"]] == ["+15017122661", "+15558675310"]
    notes = next(a["body"] for a in vcon["analysis"] if a.get("schema") == "vcon-capture-notes")
    assert notes["legs"][call]["twilio"]["sip_response_code"] == int(code)


async def test_recording_url_on_another_host_is_refused(harness: Make, fake_api: FakeTwilioApi) -> None:
    h = await harness()
    voice, recs = form_lines(VOICE), form_lines(RECORDING)
    for pairs in (voice[0], voice[2], recs[0], voice[3], recs[1]):  # recs[1] points at api.twilio.com
        assert await h.post(STATUS if "CallStatus" in dict(pairs) else REC, pairs) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    assert fake_api.requests == []
    vcon = vcon_of(h)
    assert [d["type"] for d in vcon["dialog"]] == ["recording"]
    assert "body" not in vcon["dialog"][0]
    report = next(a for a in vcon["analysis"] if a["body"].get("event") == "recording-not-fetched")
    assert report["dialog"] == 0
    assert "refused" in report["body"]["reason"] and "'api.twilio.com'" in report["body"]["reason"]
    assert h.service is not None and h.service.metrics()["machine_recordings_refused"] == 1


async def test_redirect_to_another_host_is_not_followed(harness: Make, fake_api: FakeTwilioApi) -> None:
    rec = sid("RE", 0x777)
    fake_api.redirects[f"{rec}.wav"] = "http://127.0.0.2:9/stolen.wav"
    h = await harness()
    voice, recs = form_lines(VOICE), form_lines(RECORDING)
    for pairs in (voice[2], voice[3]):
        assert await h.post(STATUS, pairs) == 204
    done = with_fields(recs[1], RecordingSid=rec, RecordingUrl=fake_api.recording_url(rec))
    assert await h.post(REC, done) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    vcon = vcon_of(h)
    report = next(a["body"] for a in vcon["analysis"] if a["body"].get("event") == "recording-not-fetched")
    assert "'127.0.0.2:9' is not the configured API host" in report["reason"]


async def test_mp3_inline_is_converted_to_wav(harness: Make, fake_api: FakeTwilioApi) -> None:
    fake_api.media[f"{RE1}.mp3"] = stereo_mp3(tone(440, 2.0), tone(1000, 2.0))
    h = await harness(recording_format="mp3")
    voice, recs = form_lines(VOICE), form_lines(RECORDING)
    for pairs in (voice[2], voice[3]):
        assert await h.post(STATUS, pairs) == 204
    assert await h.post(REC, with_fields(recs[1], RecordingUrl=fake_api.recording_url(RE1) + ".json")) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    dialog = vcon_of(h)["dialog"][0]
    assert dialog["mediatype"] == "audio/x-wav" and dialog["filename"] == f"{RE1}.wav"
    audio, rate = dialog_audio(dialog)
    assert rate == 8000 and audio.shape[1] == 2 and dialog["duration"] == pytest.approx(2.0, abs=0.1)
    assert dominant(audio[:, 0]) == pytest.approx(440, abs=5)
    assert dominant(audio[:, 1]) == pytest.approx(1000, abs=5)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
async def test_reference_mode_keeps_url_and_hash(harness: Make, fake_api: FakeTwilioApi, fmt: str) -> None:
    data = stereo_wav(tone(440, 1.0), tone(1000, 1.0)) if fmt == "wav" else stereo_mp3(tone(440, 1.0), tone(1000, 1.0))
    fake_api.media[f"{RE1}.{fmt}"] = data
    h = await harness(recording_mode="reference", recording_format=fmt)
    voice, recs = form_lines(VOICE), form_lines(RECORDING)
    for pairs in (voice[2], voice[3]):
        assert await h.post(STATUS, pairs) == 204
    assert await h.post(REC, with_fields(recs[1], RecordingUrl=fake_api.recording_url(RE1))) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    dialog = vcon_of(h)["dialog"][0]
    assert dialog["url"] == f"{fake_api.recording_url(RE1)}.{fmt}"
    assert dialog["content_hash"] == "sha512-" + b64url(hashlib.sha512(data).digest())
    assert dialog["mediatype"] == ("audio/x-wav" if fmt == "wav" else "audio/x-mp3")
    assert "body" not in dialog and dialog["parties"] == [1, 0]
    assert dialog["duration"] == pytest.approx(1.0, abs=0.1)
    assert list(h.media_dir.iterdir()) == []


async def test_recording_wait_runs_out_and_the_vcon_says_so(harness: Make) -> None:
    h = await harness(recording_wait=0.5)
    voice, recs = form_lines(VOICE), form_lines(RECORDING)
    for pairs in (voice[2], recs[0], voice[3]):  # announced, never completed
        assert await h.post(STATUS if "CallStatus" in dict(pairs) else REC, pairs) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    vcon = vcon_of(h)
    report = next(a["body"] for a in vcon["analysis"] if a["body"].get("event") == "recording-wait-expired")
    assert report["missing"] == [f"recording {RE1} (in-progress)"]
    assert report["waited_seconds"] == 0.5


async def test_restart_mid_call_resumes_into_one_vcon(harness: Make, fake_api: FakeTwilioApi) -> None:
    rec = sid("RE", 0x302)
    fake_api.media[f"{rec}.wav"] = stereo_wav(tone(440, 1.0), tone(1000, 1.0))
    h = await harness()
    items = inbound_dial_call(2, fake_api.recording_url(rec))
    for path, pairs in items[:6]:
        assert await h.post(path, pairs) == 204
    # a Media Stream is open when the daemon goes down
    lines = session_lines()
    start = json.loads(lines[1])
    start["start"]["callSid"] = sid("CA", 0x102)
    ws = await h.ws_connect()
    for line in [lines[0], json.dumps(start), *lines[2:50]]:
        await ws.send_str(line)
    await asyncio.sleep(0.2)
    reader = asyncio.ensure_future(ws.receive())  # like Twilio, answers the server's close
    await h.stop()
    assert (await reader).type.name in ("CLOSE", "CLOSING", "CLOSED")
    await ws.close()
    assert h.sink.events == []
    state_files = list((h.tmp_path / "state" / "conversations").glob("*.json"))
    assert [f.name for f in state_files] == [f"{sid('CA', 0x102)}.json"]

    await h.start()  # a new service, same state and media dirs
    for path, pairs in items[6:]:
        assert await h.post(path, pairs) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    await asyncio.sleep(0.3)
    assert len(h.sink.finished) == 1
    vcon = vcon_of(h)
    assert [p["tel"] for p in vcon["parties"]] == ["+14155550101", "+18005550100", "+12125550123"]
    types = [d["type"] for d in vcon["dialog"]]
    assert types == ["recording", "recording", "recording-set", "recording"]
    rset, child = vcon["dialog"][2:]
    by_file = {d["filename"]: d for d in vcon["dialog"][:2]}
    api_rec, stream_rec = by_file[f"{rec}.wav"], by_file["MZ00000000000000000000000000000001.wav"]
    assert api_rec["parties"] == [0, 2] and stream_rec["parties"] == [0, 2]
    s_audio, _ = dialog_audio(stream_rec)
    assert s_audio.shape[0] >= 8000 * 0.4  # the audio received before the stop was kept
    assert dominant(s_audio[:, 0]) == pytest.approx(440, abs=10)
    assert rset["duration"] == 66.0 and child["parties"] == [0, 2]
    abrupt = next(a["body"] for a in vcon["analysis"] if a["body"].get("event") == "stream-ended-abruptly")
    assert abrupt["reason"] == "the daemon stopped during the stream"
    assert not list((h.tmp_path / "state" / "conversations").glob("*.json"))


async def test_crash_with_open_stream_is_repaired_on_start(harness: Make) -> None:
    h = await harness()
    voice = form_lines(VOICE)
    assert await h.post(STATUS, voice[2]) == 204
    ws = await h.ws_connect()
    for line in session_lines()[:40]:
        await ws.send_str(line)
    await asyncio.sleep(0.2)
    assert h.service is not None
    # simulate a crash: no stop(), state left as it was last written
    state = h.service.machine.snapshot()
    wav = h.media_dir / "twilio-MZ00000000000000000000000000000001.wav"
    assert wav.exists()
    for task in list(h.service._stream_handlers):
        task.cancel()
    await ws.close()
    h2 = Harness(h.tmp_path, h.config.api_base, {})
    h2.sink = CollectingSink()
    svc = await h2.start()
    try:
        stream = next(iter(svc.machine.conversations[f"twilio:{CA1}"].streams.values()))
        assert state["conversations"][f"twilio:{CA1}"]["streams"]
        assert stream.state == "closed" and stream.duration > 0.2 and stream.abrupt
        assert await h2.post(STATUS, voice[3]) == 204
        await h2.until(lambda: len(h2.sink.finished) == 1)
        vcon = assemble(h2.sink.finished[0], AssemblyOptions(), now=h2.clock())
        validate_vcon(vcon)
        audio, _ = dialog_audio(vcon["dialog"][0])
        assert dominant(audio[:, 0]) == pytest.approx(440, abs=10)
    finally:
        await h2.close()


# -- Media Streams -----------------------------------------------------------------------------


async def test_websocket_audio_is_placed_by_timestamp(harness: Make) -> None:
    """Own session: known samples, a gap, chunks out of order; the WAV holds exactly what was sent."""
    h = await harness()
    call, stream = sid("CA", 0xABC), sid("MZ", 0xABC)
    rng = np.random.default_rng(7)
    inbound = (rng.standard_normal(8000) * 3000).astype(np.int16)
    outbound = (rng.standard_normal(8000) * 3000).astype(np.int16)
    in_ulaw, out_ulaw = ulaw_encode(inbound), ulaw_encode(outbound)
    lines = session_lines()
    start = json.loads(lines[1])
    start["start"].update(callSid=call, streamSid=stream)
    start["streamSid"] = stream

    def media(track: str, ms: int, payload: bytes) -> str:
        import base64
        return json.dumps({"event": "media", "streamSid": stream, "media": {
            "track": track, "chunk": str(ms // 20), "timestamp": str(ms),
            "payload": base64.b64encode(payload).decode()}})

    frames = []
    for ms in range(0, 1000, 20):
        if 400 <= ms < 600:
            continue  # 200 ms gap on both tracks: silence
        i = ms * 8
        frames.append(media("inbound", ms, in_ulaw[i:i + 160]))
        frames.append(media("outbound", ms, out_ulaw[i:i + 160]))
    frames[10], frames[30] = frames[30], frames[10]  # arrival out of order
    stop = json.dumps({"event": "stop", "streamSid": stream, "stop": {"callSid": call, "accountSid": ACCOUNT}})
    ws = await h.ws_connect()
    for line in [lines[0], json.dumps(start), *frames, stop]:
        await ws.send_str(line)
    await ws.close()
    voice = form_lines(VOICE)
    assert await h.post(STATUS, with_fields(voice[2], CallSid=call)) == 204
    assert await h.post(STATUS, with_fields(voice[3], CallSid=call)) == 204
    await h.until(lambda: len(h.sink.finished) == 1)
    dialog = vcon_of(h)["dialog"][0]
    audio, _ = dialog_audio(dialog)
    assert audio.shape == (8000, 2) and dialog["duration"] == 1.0
    from adapters.twilio.media_streams import ulaw_decode
    expect_in, expect_out = ulaw_decode(in_ulaw), ulaw_decode(out_ulaw)
    keep = np.r_[0:3200, 4800:8000]
    assert np.array_equal(audio[keep, 0], expect_in[keep])
    assert np.array_equal(audio[keep, 1], expect_out[keep])
    assert not audio[3200:4800].any()
    # decoded μ-law is within G.711 quantisation of what was encoded
    assert np.max(np.abs(audio[keep, 0].astype(int) - inbound[keep])) <= 260


async def test_bad_stream_messages_are_counted_not_fatal(harness: Make) -> None:
    h = await harness()
    lines = session_lines()
    ws = await h.ws_connect()
    for line in [lines[0], "not json", '{"event": "weird"}', lines[2], lines[1], *lines[2:]]:
        await ws.send_str(line)
    await ws.close()
    assert h.service is not None
    await h.until(lambda: h.service is not None and h.service.metrics().get("stream_media_frames", 0) == 100)
    m = h.service.metrics()
    assert m["errors_stream_bad-json"] == 1
    assert m["errors_stream_unknown-event"] == 1
    assert m["errors_stream_out-of-order"] == 1


# -- secrets, config ---------------------------------------------------------------------------


async def test_token_never_in_logs_metrics_or_vcons(harness: Make, fake_api: FakeTwilioApi) -> None:
    fake_api.media[f"{RE1}.wav"] = stereo_wav(tone(440, 0.5), tone(1000, 0.5))
    with structlog.testing.capture_logs() as logs:
        h = await harness()
        voice, recs = form_lines(VOICE), form_lines(RECORDING)
        assert await h.post(STATUS, voice[0], headers=signed_headers(PUBLIC + STATUS, voice[0], token="x" * 32)) == 403
        for pairs in (voice[2], voice[3]):
            assert await h.post(STATUS, pairs) == 204
        assert await h.post(REC, with_fields(recs[1], RecordingUrl=fake_api.recording_url(RE1))) == 204
        await h.until(lambda: len(h.sink.finished) == 1)
        assert h.service is not None
        text = json.dumps(vcon_of(h)) + json.dumps(h.service.metrics()) + repr(h.service) + repr(h.config)
        await h.stop()
    text += json.dumps(logs, default=str)
    text += "".join(p.read_text() for p in (h.tmp_path / "state").rglob("*.json"))
    assert any(entry["event"] == "twilio.request.refused" for entry in logs)
    assert TOKEN not in text
    basic = __import__("base64").b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    assert basic not in text


def test_service_needs_the_token_in_the_environment(tmp_path: Any) -> None:
    config = TwilioConfig.from_mapping({"account_sid": ACCOUNT, "auth_token_env": "NOPE_NOT_SET"})
    with pytest.raises(ConfigError) as err:
        TwilioService(config, CollectingSink(), state_dir=tmp_path, media_dir=tmp_path, environ={})
    assert err.value.path == "twilio.auth_token_env"
    svc = TwilioService(config, CollectingSink(), state_dir=tmp_path, media_dir=tmp_path,
                        environ={"NOPE_NOT_SET": TOKEN})
    assert [(r.method, r.path) for r in svc.routes()] == [
        ("POST", "/twilio/voice/status"), ("POST", "/twilio/voice/recording"),
        ("POST", "/twilio/voice/stream-status"), ("GET", "/twilio/media")]


async def test_download_owed_at_stop_resumes_after_restart(harness: Make, fake_api: FakeTwilioApi) -> None:
    h = await harness(fetch_retries=100)
    voice, recs = form_lines(VOICE), form_lines(RECORDING)
    for pairs in (voice[2], voice[3]):
        assert await h.post(STATUS, pairs) == 204
    assert await h.post(REC, with_fields(recs[1], RecordingUrl=fake_api.recording_url(RE1))) == 204
    await h.until(lambda: len(fake_api.requests) >= 2)  # 404: Twilio still finishing the file
    await h.stop()
    assert h.sink.finished == []
    fake_api.media[f"{RE1}.wav"] = stereo_wav(tone(440, 1.0), tone(1000, 1.0))
    await h.start()
    await h.until(lambda: len(h.sink.finished) == 1)
    dialog = vcon_of(h)["dialog"][0]
    audio, _ = dialog_audio(dialog)
    assert dominant(audio[:, 0]) == pytest.approx(440, abs=5)
    assert fake_api.requests[-1][0] == f"{RE1}.wav"
