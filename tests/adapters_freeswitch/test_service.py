"""The asyncio shell against a real TCP event-socket server and a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest
import structlog
from aiohttp import web

from adapters.freeswitch.config import FreeswitchConfig
from adapters.freeswitch.esl import EslEvent
from adapters.freeswitch.service import AuthenticationError, FreeswitchService
from conversation.vcon import b64url_decode
from tests.adapters_freeswitch.support import (
    A_UUID,
    B_UUID,
    CDR_2018,
    DROP,
    HOLD_2018,
    REC_START,
    REC_STOP,
    T0,
    FakeEsl,
    a_leg,
    answered_call,
    b_leg,
    corpus_event,
    dominant_hz,
    frames,
    unanswered_call,
    vcon_of,
    write_stereo_wav,
)
from tests.vcon_checks import wav_channels
from vcon_capture.sink import CollectingSink

ESL_PW = "esl-Secr3t-Pw"
CDR_PW = "cdr-Secr3t-Pw"


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def make_config(port: int, roots: list[str], *, cdr: bool = False, esl: bool = True,
                **recordings: Any) -> FreeswitchConfig:
    return FreeswitchConfig.from_mapping({
        "esl": {"enabled": esl, "host": "127.0.0.1", "port": port, "password_env": "T_FS_ESL_PW",
                "reconnect": {"min_seconds": 0.05, "max_seconds": 0.2}, "connect_timeout_seconds": 2},
        "cdr": {"enabled": cdr, "username": "fs", "password_env": "T_FS_CDR_PW", "wait_seconds": 1.0,
                "max_body_bytes": 64 * 1024},
        "recordings": {"roots": roots, "poll_seconds": 0.05, "wait_seconds": 2, **recordings},
    })


@pytest.fixture(autouse=True)
def _passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FS_ESL_PW", ESL_PW)
    monkeypatch.setenv("T_FS_CDR_PW", CDR_PW)


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "recordings"
    root.mkdir()
    return root


Runner = Callable[..., Awaitable[tuple[FreeswitchService, CollectingSink]]]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Runner]:
    started: list[FreeswitchService] = []

    async def start(config: FreeswitchConfig) -> tuple[FreeswitchService, CollectingSink]:
        sink = CollectingSink()
        service = FreeswitchService(config, sink, state_dir=tmp_path / "state", media_dir=tmp_path / "media")
        await service.start()
        started.append(service)
        return service, sink

    yield start
    for service in started:
        await service.stop()


def with_recording(events: list[EslEvent], path: str, *, leg: str = "a") -> list[EslEvent]:
    """Insert RECORD_START/RECORD_STOP (the constructed corpus events, or B-leg ones) before the hangups."""
    ans = T0 + 9.76
    if leg == "a":
        start, stop = corpus_event(REC_START), corpus_event(REC_STOP)
        start.headers["Event-Date-Timestamp"] = "1521025767800000"
        start.headers["Record-File-Path"] = stop.headers["Record-File-Path"] = path
    else:
        start = b_leg("RECORD_START", ans + 0.05, answered=ans, Record__File__Path=path)
        stop = b_leg("RECORD_STOP", ans + 20, answered=ans, Record__File__Path=path)
    return [*events[:5], start, stop, *events[5:]]


async def test_answered_call_with_stereo_recording(running: Runner, roots: Path) -> None:
    wav = roots / f"{A_UUID}.wav"
    write_stereo_wav(wav, left_hz=440, right_hz=1000, seconds=1.0)
    async with FakeEsl(ESL_PW, scripts=[frames(with_recording(answered_call(), str(wav)))]) as esl:
        service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
        assert esl.commands[0] == "auth ***"
        assert esl.commands[1].startswith("event plain CHANNEL_CREATE CHANNEL_ANSWER")
    conv = sink.finished[0]
    assert not conv.partial
    vcon = vcon_of(conv)
    rec = vcon["dialog"][0]
    assert rec["type"] == "recording" and rec["parties"] == [0, 1] and rec["mediatype"] == "audio/x-wav"
    assert rec["start"] == "2018-03-14T11:09:27.800Z" and rec["duration"] == pytest.approx(1.0)
    rate, left, right = wav_channels(b64url_decode(rec["body"]))
    assert rate == 8000
    assert dominant_hz(left, rate) == pytest.approx(440, abs=2)  # caller (read side of the A leg)
    assert dominant_hz(right, rate) == pytest.approx(1000, abs=2)
    assert wav.exists()  # FreeSWITCH's file is never removed
    assert not list((Path(service.media_dir)).glob("*.wav"))  # our copy is removed once in the vCon
    assert service.metrics()["freeswitch_recordings"] == 1


async def test_b_leg_stereo_recording_puts_the_caller_first(running: Runner, roots: Path) -> None:
    wav = roots / "b-leg.wav"
    # Recorded on the callee's leg: its read side (callee, 700 Hz) left, the caller (300 Hz) right.
    write_stereo_wav(wav, left_hz=700, right_hz=300, seconds=0.5)
    async with FakeEsl(ESL_PW, scripts=[frames(with_recording(answered_call(), str(wav), leg="b"))]) as esl:
        _service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
    vcon = vcon_of(sink.finished[0])
    rec = vcon["dialog"][1]
    assert rec["parties"] == [0, 1]
    rate, left, right = wav_channels(b64url_decode(rec["body"]))
    assert dominant_hz(left, rate) == pytest.approx(300, abs=3)
    assert dominant_hz(right, rate) == pytest.approx(700, abs=3)


async def test_mp3_recording_and_reference_mode(running: Runner, roots: Path, tmp_path: Path) -> None:
    import av

    mp3 = roots / "call.mp3"
    with av.open(str(mp3), "w") as out:
        stream = out.add_stream("mp3", rate=16000, layout="stereo")
        t = np.arange(16000) / 16000
        pcm = np.stack([np.sin(2 * np.pi * 500 * t), np.sin(2 * np.pi * 1500 * t)]).astype(np.float32) * 0.3
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    async with FakeEsl(ESL_PW, scripts=[frames(with_recording(answered_call(), str(mp3)))]) as esl:
        _service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
    vcon = vcon_of(sink.finished[0])
    rate, left, right = wav_channels(b64url_decode(vcon["dialog"][0]["body"]))
    assert dominant_hz(left, rate) == pytest.approx(500, abs=5)
    assert dominant_hz(right, rate) == pytest.approx(1500, abs=5)

    async with FakeEsl(ESL_PW, scripts=[frames(with_recording(answered_call(), str(mp3)))]) as esl:
        config = make_config(esl.port, [str(roots)], mode="reference", url_base="https://rec.example.com/fs")
        _service, sink = await running(config)
        await until(lambda: bool(sink.finished))
    rec = vcon_of(sink.finished[0])["dialog"][0]
    assert rec["url"] == "https://rec.example.com/fs/call.mp3" and rec["mediatype"] == "audio/x-mp3"
    assert rec["content_hash"].startswith("sha512-") and "body" not in rec
    assert mp3.exists()


@pytest.mark.parametrize(
    ("scenario", "check"),
    [
        ("busy", lambda v: [d["disposition"] for d in v["dialog"]] == ["busy", "busy"]),
        ("cancelled", lambda v: [d["disposition"] for d in v["dialog"]] == ["hung-up", "hung-up"]),
        ("no-answer", lambda v: [d["disposition"] for d in v["dialog"]] == ["no-answer", "no-answer"]),
    ],
)
async def test_unanswered_over_the_socket(running: Runner, roots: Path, scenario: str,
                                          check: Callable[[dict[str, Any]], bool]) -> None:
    cause = {"busy": "USER_BUSY", "cancelled": "ORIGINATOR_CANCEL", "no-answer": "NO_ANSWER"}[scenario]
    async with FakeEsl(ESL_PW, scripts=[frames(unanswered_call(cause))]) as esl:
        _service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
    vcon = vcon_of(sink.finished[0])
    assert all(d["type"] == "incomplete" for d in vcon["dialog"])
    assert check(vcon)


def held_call() -> list[EslEvent]:
    ans = T0 + 9.76
    events = answered_call()
    return [*events[:5], a_leg("CHANNEL_HOLD", ans + 0.08, answered=ans),
            a_leg("CHANNEL_UNHOLD", ans + 15.57, answered=ans),
            b_leg("DTMF", ans + 16, answered=ans, DTMF__Digit="7", DTMF__Duration="800"), *events[5:]]


async def test_held_call_with_dtmf(running: Runner, roots: Path) -> None:
    async with FakeEsl(ESL_PW, scripts=[frames(held_call())]) as esl:
        _service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
    vcon = vcon_of(sink.finished[0])
    a, b = vcon["dialog"]
    assert [(h["party"], h["event"], h["time"]) for h in a["party_history"]] == [
        (1, "hold", "2018-03-14T11:09:27.846Z"), (1, "unhold", "2018-03-14T11:09:43.336Z")]
    assert b["party_history"] == [
        {"party": 1, "time": "2018-03-14T11:09:43.666Z", "event": "keydown", "button": "7"},
        {"party": 1, "time": "2018-03-14T11:09:43.766Z", "event": "keyup", "button": "7"},
    ]


def transferred_call() -> list[EslEvent]:
    """1001 calls 1002; 1002 blind-transfers the caller to 1003 (REFER), who answers."""
    c_uuid = "c3c3c3c3-0000-4000-8000-000000000003"
    ans, xfer, ans_c, end = T0 + 9.76, T0 + 14.0, T0 + 17.0, T0 + 40.0
    history = f"{int(xfer)}:86c9ebb2-888f-42d5-9afa-2101449a4b86:bl_xfer:1003/default/XML"
    events = answered_call()
    return [
        *events[:5],
        b_leg("CHANNEL_HANGUP_COMPLETE", xfer + 0.1, answered=ans, hangup=xfer + 0.1,
              Hangup__Cause="BLIND_TRANSFER", variable_sip_hangup_disposition="recv_bye"),
        b_leg("CHANNEL_CREATE", xfer + 0.2, uuid=c_uuid, destination="1003"),
        b_leg("CHANNEL_ANSWER", ans_c, answered=ans_c, uuid=c_uuid, destination="1003"),
        a_leg("CHANNEL_BRIDGE", ans_c, answered=ans, Other__Leg__Unique__ID=c_uuid,
              Bridge__A__Unique__ID=A_UUID, Bridge__B__Unique__ID=c_uuid),
        a_leg("CHANNEL_HANGUP_COMPLETE", end, answered=ans, hangup=end, Other__Leg__Unique__ID=c_uuid,
              variable_transfer_history=history, variable_hold_events=None),
        b_leg("CHANNEL_HANGUP_COMPLETE", end + 0.01, answered=ans_c, hangup=end + 0.01, uuid=c_uuid,
              destination="1003", Hangup__Cause="NORMAL_CLEARING"),
    ]


async def test_transferred_call(running: Runner, roots: Path) -> None:
    async with FakeEsl(ESL_PW, scripts=[frames(transferred_call())]) as esl:
        _service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
    assert len(sink.finished) == 1
    vcon = vcon_of(sink.finished[0])
    assert [p.get("sip") for p in vcon["parties"]] == [
        "sip:1001@192.168.56.202", "sip:1002@192.168.56.202", "sip:1003@192.168.56.202"]
    assert vcon["parties"][2]["role"] == "callee"
    a, b, c, xfer = vcon["dialog"]
    assert (a["parties"], b["parties"], c["parties"]) == ([0, 1], [0, 1], [0, 2])
    assert b["duration"] == pytest.approx(4.34, abs=0.01)
    assert xfer == {"type": "transfer", "start": "2018-03-14T11:09:32.000Z", "transferee": 0, "transferor": 1,
                    "transfer_target": 2, "original": 0, "target_dialog": 2}


async def test_paths_outside_roots_and_symlinks_are_refused(running: Runner, roots: Path,
                                                            tmp_path: Path) -> None:
    outside = tmp_path / "secret.wav"
    write_stereo_wav(outside, left_hz=100, right_hz=200, seconds=0.2)
    link = roots / "link.wav"
    link.symlink_to(outside)
    dotdot = str(roots / ".." / "secret.wav")
    ans = T0 + 9.76
    events = answered_call()
    stops = [a_leg("RECORD_STOP", ans + 1 + i, answered=ans, Record__File__Path=p)
             for i, p in enumerate(["/etc/passwd", str(link), dotdot, str(roots / "missing.wav")])]
    with structlog.testing.capture_logs() as logs:
        async with FakeEsl(ESL_PW, scripts=[frames([*events[:5], *stops, *events[5:]])]) as esl:
            service, sink = await running(make_config(esl.port, [str(roots)]))
            await until(lambda: bool(sink.finished))
    vcon = vcon_of(sink.finished[0])
    problems = {a["body"]["recording"]: a["body"]["problem"] for a in vcon["analysis"]}
    assert problems == {"/etc/passwd": "outside_roots", str(link): "outside_roots", dotdot: "outside_roots",
                        str(roots / "missing.wav"): "missing"}
    assert all(a["vendor"] == "vcon-capture" and a["type"] == "report" and a["dialog"] == 0
               for a in vcon["analysis"])
    assert not any("body" in d for d in vcon["dialog"])
    refused = [e for e in logs if e["event"] == "freeswitch.recording_not_read"]
    assert sorted(e["problem"] for e in refused) == ["missing", "outside_roots", "outside_roots", "outside_roots"]
    assert service.metrics()["freeswitch_errors_recording_outside_roots"] == 3


async def test_socket_dropped_mid_call_reconnects_and_keeps_the_call(running: Runner, roots: Path) -> None:
    events = frames(held_call())
    scripts = [[*events[:6], DROP], events[6:]]
    with structlog.testing.capture_logs() as logs:
        async with FakeEsl(ESL_PW, scripts=scripts) as esl:
            service, sink = await running(make_config(esl.port, [str(roots)]))
            await until(lambda: bool(sink.finished))
            assert esl.connections == 2
    conv = sink.finished[0]
    assert not conv.partial
    vcon = vcon_of(conv)
    assert [h["event"] for h in vcon["dialog"][0]["party_history"]] == ["hold", "unhold"]
    assert len(vcon["dialog"]) == 2
    metrics = service.metrics()
    assert metrics["freeswitch_esl_reconnects"] >= 1 and metrics["freeswitch_esl_connects"] == 2
    assert any(e["event"] == "freeswitch.esl_connection_lost" or e["event"] == "freeswitch.esl_reconnecting"
               for e in logs)


async def test_wrong_password_is_a_clear_error_not_a_loop(running: Runner, roots: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FS_ESL_PW", "not-the-password")
    with structlog.testing.capture_logs() as logs:
        async with FakeEsl(ESL_PW) as esl:
            service, _sink = await running(make_config(esl.port, [str(roots)]))
            await until(lambda: service.fatal_error is not None)
            await asyncio.sleep(0.5)  # several backoff periods: no second attempt
            assert esl.connections == 1
    assert isinstance(service.fatal_error, AuthenticationError)
    assert "T_FS_ESL_PW" in str(service.fatal_error) and "not-the-password" not in str(service.fatal_error)
    assert service._esl_task is not None and service._esl_task.done()
    assert service.metrics()["freeswitch_esl_auth_failures"] == 1
    errors = [e for e in logs if e["event"] == "freeswitch.esl_setup_refused"]
    assert len(errors) == 1 and errors[0]["log_level"] == "error"
    assert "not-the-password" not in repr(logs)


# -- mod_json_cdr over HTTP --------------------------------------------------------------------------


async def serve(service: FreeswitchService) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(service.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/freeswitch/cdr"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_cdr_endpoint_auth_encodings_and_limits(running: Runner, roots: Path) -> None:
    service, sink = await running(make_config(1, [str(roots)], cdr=True, esl=False))
    runner, url = await serve(service)
    body = CDR_2018.read_bytes()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
            async with http.post(url, data=body, headers=basic("fs", "wrong")) as r:
                assert r.status == 401
            async with http.post(url, data=body, headers={"Authorization": "Basic !!!"}) as r:
                assert r.status == 401
            assert sink.events == []
            async with http.post(url, data=b"x" * (70 * 1024), headers=basic("fs", CDR_PW)) as r:
                assert r.status == 413
            async with http.post(url, data=b"cdr=%7Bnope", headers={
                    **basic("fs", CDR_PW), "Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert r.status == 400
            form = b"cdr=" + quote(body.decode(), safe="").encode()
            async with http.post(url, data=form, headers={
                    **basic("fs", CDR_PW), "Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert r.status == 200 and await r.text() == "ok\n"
            await until(lambda: bool(sink.finished))
            async with http.post(url, data=body, headers={**basic("fs", CDR_PW),
                                                          "Content-Type": "application/json"}) as r:
                assert r.status == 200 and await r.text() == "duplicate\n"
            other = json.loads(body)
            for key in ("uuid", "call_uuid"):
                other["variables"][key] = "11111111-2222-4333-8444-555555555555"
            other["variables"]["sip_call_id"] = "another-call"
            other["callflow"][0]["caller_profile"]["uuid"] = "11111111-2222-4333-8444-555555555555"
            b64 = b"cdr=" + base64.b64encode(json.dumps(other).encode())
            async with http.post(url, data=b64, headers={
                    **basic("fs", CDR_PW), "Content-Type": "application/x-www-form-base64-encoded"}) as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    assert len(sink.finished) == 2
    vcon = vcon_of(sink.finished[0])
    assert [h["event"] for h in vcon["dialog"][0]["party_history"]] == ["hold", "unhold"]
    metrics = service.metrics()
    assert metrics["freeswitch_cdr_refused"] == 4 and metrics["freeswitch_cdr_bad"] == 1
    assert metrics["freeswitch_cdr_duplicates"] == 1


async def test_esl_and_cdr_for_the_same_call_give_one_vcon(running: Runner, roots: Path) -> None:
    events = frames([corpus_event(HOLD_2018)])
    async with FakeEsl(ESL_PW, scripts=[events]) as esl:
        service, sink = await running(make_config(esl.port, [str(roots)], cdr=True))
        runner, url = await serve(service)
        try:
            await until(lambda: service.machine.active_keys == [f"fs:{A_UUID}"])
            assert sink.finished == []  # all legs hung up: waiting for the CDR
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data=CDR_2018.read_bytes(), headers=basic("fs", CDR_PW)) as r:
                    assert r.status == 200 and await r.text() == "ok\n"
                await until(lambda: bool(sink.finished))
                async with http.post(url, data=CDR_2018.read_bytes(), headers=basic("fs", CDR_PW)) as r:
                    assert await r.text() == "duplicate\n"
        finally:
            await runner.cleanup()
    assert len(sink.finished) == 1
    vcon = vcon_of(sink.finished[0])
    assert len([d for d in vcon["dialog"] if d["type"] == "transfer"]) == 1
    assert [h["event"] for h in vcon["dialog"][0]["party_history"]] == ["hold", "unhold"]
    assert service.metrics()["freeswitch_cdr_enrichments"] == 1


async def test_cdr_never_comes_the_esl_call_ends_after_the_wait(running: Runner, roots: Path) -> None:
    async with FakeEsl(ESL_PW, scripts=[frames(answered_call())]) as esl:
        _service, sink = await running(make_config(esl.port, [str(roots)], cdr=True))
        await until(lambda: bool(sink.finished), timeout=4)
    assert not sink.finished[0].partial


async def test_stop_ends_calls_in_progress_as_partial(tmp_path: Path, roots: Path) -> None:
    async with FakeEsl(ESL_PW, scripts=[frames(answered_call()[:4])]) as esl:
        sink = CollectingSink()
        service = FreeswitchService(make_config(esl.port, [str(roots)]), sink, state_dir=tmp_path,
                                    media_dir=tmp_path / "m")
        await service.start()
        await until(lambda: len(sink.events) > 5)
        await service.stop()
    assert sink.finished[0].partial and sink.finished[0].end_reason == "shutdown"


async def test_secrets_never_leak(running: Runner, roots: Path) -> None:
    wav = roots / f"{A_UUID}.wav"
    write_stereo_wav(wav, left_hz=440, right_hz=1000, seconds=0.2)
    with structlog.testing.capture_logs() as logs:
        async with FakeEsl(ESL_PW, scripts=[frames(with_recording(answered_call(), str(wav)))]) as esl:
            service, sink = await running(make_config(esl.port, [str(roots)], cdr=True))
            runner, url = await serve(service)
            try:
                async with aiohttp.ClientSession() as http, http.post(
                    url, data=b"{}", headers=basic("fs", CDR_PW + "x")
                ) as r:
                    assert r.status == 401
                await until(lambda: bool(sink.finished), timeout=5)
            finally:
                await runner.cleanup()
    vcon = vcon_of(sink.finished[0])
    blobs = [repr(logs), json.dumps(service.metrics()), json.dumps(vcon), repr(service.config),
             repr(sink.events), " ".join(esl.commands)]
    for blob in blobs:
        assert ESL_PW not in blob and CDR_PW not in blob
    assert os.environ["T_FS_ESL_PW"] == ESL_PW


async def test_json_subscription_and_events(running: Runner, roots: Path) -> None:
    from adapters.freeswitch.esl import frame_message

    json_frames = [frame_message("text/event-json", json.dumps(e.headers).encode()) for e in answered_call()]
    async with FakeEsl(ESL_PW, scripts=[json_frames]) as esl:
        config = FreeswitchConfig.from_mapping({
            "esl": {"port": esl.port, "password_env": "T_FS_ESL_PW", "format": "json",
                    "events": ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"]},
            "recordings": {"roots": [str(roots)]},
        })
        _service, sink = await running(config)
        await until(lambda: bool(sink.finished))
        assert esl.commands[1] == "event json CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE"
    assert len(vcon_of(sink.finished[0])["dialog"]) == 2
    assert B_UUID in sink.finished[0].legs


async def test_record_start_without_stop_is_read_once_its_size_settles(running: Runner, roots: Path) -> None:
    wav = roots / "growing.wav"
    write_stereo_wav(wav, left_hz=440, right_hz=1000, seconds=0.3)
    ans = T0 + 9.76
    events = answered_call()
    start = a_leg("RECORD_START", ans + 0.1, answered=ans, Record__File__Path=str(wav))
    async with FakeEsl(ESL_PW, scripts=[frames([*events[:5], start, *events[5:]])]) as esl:
        service, sink = await running(make_config(esl.port, [str(roots)]))
        await until(lambda: bool(sink.finished))
    rec = vcon_of(sink.finished[0])["dialog"][0]
    assert rec["duration"] == pytest.approx(0.3) and rec["start"] == "2018-03-14T11:09:27.866Z"
    assert service.metrics()["freeswitch_recordings"] == 1
