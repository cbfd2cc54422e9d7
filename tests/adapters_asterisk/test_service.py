"""The service against real peers on loopback: an AMI server on a TCP socket replaying the corpus
transcript and built scenarios, an aiohttp ARI websocket + stored-recording server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from adapters.asterisk.config import AsteriskConfig
from adapters.asterisk.service import AsteriskService, AuthenticationError
from conversation.vcon import b64url_decode
from tests.adapters_asterisk import scenarios as sc
from tests.adapters_asterisk.audio import dominant_freq, tone, write_g711, write_wav
from tests.adapters_asterisk.servers import FakeAmi, FakeAri, build_vcon, wait_for
from tests.conftest import CORPUS_EVENTS
from vcon_capture.sink import CollectingSink

AMI_SECRET = "ami-S3cret-value-42"
ARI_PASSWORD = "ari-Pa55word-value-77"
T0 = 1_767_261_600.0


@pytest.fixture
async def ami() -> AsyncIterator[FakeAmi]:
    server = FakeAmi("vcon", AMI_SECRET)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def ari() -> AsyncIterator[FakeAri]:
    server = FakeAri("vcon", ARI_PASSWORD, "vcon-capture")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_AMI_SECRET", AMI_SECRET)
    monkeypatch.setenv("TEST_ARI_PASSWORD", ARI_PASSWORD)
    monkeypatch.setenv("TEST_BAD_SECRET", "wrong-secret-value")


def make_service(tmp_path: Path, *, ami: FakeAmi | None = None, ari: FakeAri | None = None,
                 secret_env: str = "TEST_AMI_SECRET", ami_auth: str | None = None,
                 **recordings: Any) -> tuple[AsteriskService, CollectingSink]:
    data: dict[str, Any] = {
        "domain": "pbx.example",
        "end_linger_seconds": 0.2,
        "recordings": {"roots": [str(tmp_path / "monitor")], "poll_seconds": 0.05, "wait_seconds": 5,
                       "relative_to": str(tmp_path / "monitor"), **recordings},
    }
    if ami is not None:
        data["ami"] = {"host": "127.0.0.1", "port": ami.port, "username": "vcon", "secret_env": secret_env,
                       "reconnect": {"min_seconds": 0.05, "max_seconds": 0.2}}
        if ami_auth is not None:
            data["ami"]["auth"] = ami_auth
    if ari is not None:
        data["ari"] = {"url": f"http://127.0.0.1:{ari.port}", "username": "vcon",
                       "password_env": "TEST_ARI_PASSWORD", "app": "vcon-capture",
                       "reconnect": {"min_seconds": 0.05, "max_seconds": 0.2}}
    (tmp_path / "monitor").mkdir(exist_ok=True)
    sink = CollectingSink()
    service = AsteriskService(AsteriskConfig.from_mapping(data), sink, state_dir=tmp_path / "state",
                              media_dir=tmp_path / "media")
    return service, sink


def wav_channels(dialog: dict[str, Any]) -> tuple[int, int, np.ndarray]:
    data = b64url_decode(dialog["body"])
    with wave.open(io.BytesIO(data), "rb") as w:
        n, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, n)
    return n, rate, pcm


def assert_no_secrets(*things: Any) -> None:
    text = json.dumps(things, default=repr)
    for secret in (AMI_SECRET, ARI_PASSWORD, base64.b64encode(f"vcon:{ARI_PASSWORD}".encode()).decode()):
        assert secret not in text


async def test_corpus_transcript_over_tcp_crlf(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    path = CORPUS_EVENTS / "asterisk" / "ami" / "panoramisk_originate_with_events_ast11.ami"
    if not path.is_file():
        pytest.skip("corpus not beside the checkout")
    service, sink = make_service(tmp_path, ami=ami)
    with capture_logs() as logs:
        await service.start()
        await service.wait_connected()
        # Real AMI is CRLF; the transcript is stored with LF. Skip its Originate action block.
        body = path.read_bytes().split(b"\n\n", 1)[1].replace(b"\n", b"\r\n") + b"\r\n\r\n"
        for i in range(0, len(body), 1000):  # arbitrary TCP segmentation
            ami.push(body[i : i + 1000])
        await wait_for(lambda: len(sink.finished) == 1)
        await service.stop()
    vcon = build_vcon(sink.finished[0])
    assert [p.get("name") for p in vcon["parties"]] == ["Panoramisk tests", "S F", "L G"]
    assert [d["parties"] for d in vcon["dialog"]] == [[0, 1], [1, 2]]
    metrics = service.metrics()
    assert metrics["events_ami"] == 748 + 1 and metrics["conversations"] == 1  # + FullyBooted
    assert any(e["event"] == "asterisk.conversation.ended" and e["conversation"] == "ast:1414510600.0"
               for e in logs)
    # By default the secret never crosses the wire: an MD5 challenge, then a Login with its key.
    assert [a.name for a in ami.actions[:2]] == ["Challenge", "Login"]
    assert ami.actions[1].get("AuthType") == "MD5" and ami.actions[1].get("Events") == "on"
    assert all(AMI_SECRET not in bytes(a).decode() for a in ami.actions)
    assert_no_secrets(logs, metrics, vcon)


async def test_answered_call_with_mono_mixmonitor_wav(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    service, sink = make_service(tmp_path, ami=ami)
    write_wav(tmp_path / "monitor" / "call-1.wav", tone(440, 2.0))
    s, _a, b = sc.answered_call(T0, rec=str(tmp_path / "monitor" / "call-1.wav"))
    with capture_logs() as logs:
        await service.start()
        await service.wait_connected()
        ami.push(s.wire())
        await wait_for(lambda: len(sink.finished) == 1)
        await service.stop()
    vcon = build_vcon(sink.finished[0])
    (d,) = vcon["dialog"]
    assert d["type"] == "recording" and d["mediatype"] == "audio/x-wav" and d["encoding"] == "base64url"
    assert d["parties"] == [0, 1]  # one mono channel mixing both parties (docs/asterisk.md)
    assert d["duration"] == 2.0 and [h["event"] for h in d["party_history"]] == ["keydown", "keyup", "hold",
                                                                                  "unhold"]
    n, rate, pcm = wav_channels(d)
    assert (n, rate) == (1, 8000) and abs(dominant_freq(pcm[:, 0], rate) - 440) < 3
    notes = vcon["analysis"][0]["body"]["legs"][f"leg:{b.uid}"]
    assert notes["recording_mix"]["mixed"] == "both directions in one channel"
    assert_no_secrets(logs, service.metrics(), vcon)


async def test_attended_transfer_with_split_ulaw_legs_is_stereo(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    service, sink = make_service(tmp_path, ami=ami)
    mon = tmp_path / "monitor"
    write_g711(mon / "xfer-in.ulaw", tone(440, 3.0), "ulaw")    # received from Alice's channel
    write_g711(mon / "xfer-out.ulaw", tone(1000, 3.0), "ulaw")  # sent to Alice's channel
    s, _a, _b1, _b2, _c = sc.attended_transfer_call(
        T0, rec="xfer.wav", rec_app_data="xfer.wav,br(xfer-in.ulaw)t(xfer-out.ulaw)")
    await service.start()
    await service.wait_connected()
    ami.push(s.wire())
    await wait_for(lambda: len(sink.finished) == 1)
    await service.stop()
    vcon = build_vcon(sink.finished[0])
    original, consultation, target, xfer = vcon["dialog"]
    assert original["parties"] == [0, 1]  # caller (Alice) on channel 0
    n, rate, pcm = wav_channels(original)
    assert n == 2 and abs(dominant_freq(pcm[:, 0], rate) - 440) < 3 and abs(dominant_freq(pcm[:, 1], rate) - 1000) < 3
    assert consultation["parties"] == [1, 2] and target["parties"] == [0, 2]
    assert (xfer["transferee"], xfer["transferor"], xfer["transfer_target"]) == (0, 1, 2)
    assert (xfer["original"], xfer["consultation"], xfer["target_dialog"]) == (0, 1, 2)
    assert not list((tmp_path / "media").glob("*-download*"))


async def test_unanswered_and_blind_transfer_calls(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    service, sink = make_service(tmp_path, ami=ami)
    scripts = [
        sc.failed_call(T0, "BUSY", 17, "User busy")[0],
        sc.failed_call(T0 + 100, "NOANSWER", 16, "Normal Clearing")[0],
        sc.failed_call(T0 + 200, "CANCEL", 16, "Normal Clearing", caller_cancels=True)[0],
        sc.blind_transfer_call(T0 + 300)[0],
    ]
    # Distinct uniqueids per call.
    for n, s in enumerate(scripts):
        s.msgs = [type(m)(tuple((k, v.replace(f"{int(T0 + 100 * n)}.", f"{int(T0 + 100 * n)}.{n}")
                                 if k.lower().endswith(("uniqueid", "linkedid")) else v) for k, v in m.fields))
                  for m in s.msgs]
    await service.start()
    await service.wait_connected()
    for s in scripts:
        ami.push(s.wire())
    await wait_for(lambda: len(sink.finished) == 4)
    await service.stop()
    vcons = [build_vcon(c) for c in sink.finished]
    assert [v["dialog"][0].get("disposition") for v in vcons] == ["busy", "no-answer", "hung-up", None]
    blind = vcons[3]
    assert [d["type"] for d in blind["dialog"]] == ["recording", "recording", "transfer"]
    assert blind["dialog"][2]["transfer_target"] == 2 and blind["parties"][2]["uuid"] == "1003"


async def test_outside_roots_and_symlink_are_refused_and_reported(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    service, sink = make_service(tmp_path, ami=ami)
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    outside = write_wav(secret_dir / "private.wav", tone(300, 1.0))
    (tmp_path / "monitor" / "sneaky.wav").symlink_to(outside)
    s1, *_ = sc.answered_call(T0, rec=str(outside))
    s2, *_ = sc.answered_call(T0 + 100, rec=str(tmp_path / "monitor" / "sneaky.wav"))
    s2.msgs = [type(m)(tuple((k, v.replace(f"{int(T0 + 100)}.", f"{int(T0 + 100)}.9")
                             if k.lower().endswith(("uniqueid", "linkedid")) else v) for k, v in m.fields))
               for m in s2.msgs]
    with capture_logs() as logs:
        await service.start()
        await service.wait_connected()
        ami.push(s1.wire() + s2.wire())
        await wait_for(lambda: len(sink.finished) == 2)
        await service.stop()
    for conv in sink.finished:
        vcon = build_vcon(conv)
        assert "body" not in vcon["dialog"][0]
        report = next(x for x in vcon["analysis"] if x.get("schema") == "vcon-capture-recording-problems")
        assert report["body"]["recordings_missing"][0]["reason"] == "outside-roots"
    assert service.metrics()["refused_paths"] == 2
    refused = [e for e in logs if e["event"] == "asterisk.recording.unusable"]
    assert len(refused) == 2 and {e["reason"] for e in refused} == {"outside-roots"}


async def test_dropped_socket_mid_call_reconnects_into_one_vcon(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    service, sink = make_service(tmp_path, ami=ami)
    s, a, b = sc.answered_call(T0)
    cut = next(i for i, m in enumerate(s.msgs) if m.name == "Hold")
    first, rest = s.msgs[:cut], s.msgs[cut:]
    ami.live = {a.uid, b.uid}
    await service.start()
    await service.wait_connected()
    ami.push(b"".join(bytes(m) for m in first) + bytes(rest[0])[:25])  # drop inside a message
    ami.push(None)
    await wait_for(lambda: ami.logins == 2)
    await service.wait_connected()
    ami.push(b"".join(bytes(m) for m in rest))
    await wait_for(lambda: len(sink.finished) == 1)
    await service.stop()
    assert ami.connections == 2
    assert any(act.name == "CoreShowChannels" for act in ami.actions)
    conv = sink.finished[0]
    assert not conv.partial
    (d,) = build_vcon(conv)["dialog"]
    assert d["type"] == "recording" and [h["event"] for h in d["party_history"]] == [
        "keydown", "keyup", "hold", "unhold"]
    assert service.metrics()["reconnects_ami"] == 1


async def test_bad_credentials_stop_with_a_clear_error(tmp_path: Path, ami: FakeAmi, env: None) -> None:
    service, _sink = make_service(tmp_path, ami=ami, secret_env="TEST_BAD_SECRET")
    with capture_logs() as logs:
        await service.start()
        await wait_for(lambda: "ami" in service.fatal_errors)
        await asyncio.sleep(0.4)  # several backoff periods: no retry
        await service.stop()
    err = service.fatal_errors["ami"]
    assert isinstance(err, AuthenticationError)
    assert "refused user 'vcon'" in str(err) and "Authentication failed" in str(err)
    assert ami.connections == 1 and ami.failed_logins == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["asterisk.ami.auth_failed"]
    assert service.metrics()["errors_auth"] == 1
    assert "wrong-secret-value" not in json.dumps([logs, service.metrics(), str(err)], default=repr)


@pytest.mark.parametrize("challenge", [True, False])
async def test_plain_login_for_a_peer_without_challenge(tmp_path: Path, env: None, challenge: bool) -> None:
    """``auth: plain`` sends the secret (the only way into a manager peer without the Challenge
    action); ``md5`` against such a peer stops with an error that says so."""
    server = FakeAmi("vcon", AMI_SECRET, challenge=challenge)
    await server.start()
    try:
        service, _sink = make_service(tmp_path, ami=server, ami_auth="plain" if challenge else "md5")
        await service.start()
        if challenge:
            await service.wait_connected()
            assert server.logins == 1 and server.actions[0].name == "Login"
            assert server.actions[0].get("Secret") == AMI_SECRET and server.actions[0].get("AuthType") is None
        else:
            await wait_for(lambda: "ami" in service.fatal_errors)
            err = service.fatal_errors["ami"]
            assert isinstance(err, AuthenticationError) and "asterisk.ami.auth: plain" in str(err)
            assert server.logins == 0 and AMI_SECRET not in str(err)
        await service.stop()
    finally:
        await server.close()


def ari_texts(channel_id: str, rec_name: str) -> list[str]:
    ari_dir = CORPUS_EVENTS / "asterisk" / "ari"
    texts = [(ari_dir / n).read_text() for n in (
        "cgrates_stasisStart_2016.json", "cgrates_channelStateChange_2016.json")]
    for kind, ts in (("RecordingStarted", "2016-09-12T13:53:52.500+0200"),
                     ("RecordingFinished", "2016-09-12T13:54:27.000+0200")):
        texts.append(json.dumps({"type": kind, "application": "cgratesAuth", "timestamp": ts,
                                 "recording": {"name": rec_name, "format": "wav", "state": "done",
                                               "target_uri": f"channel:{channel_id}"}}))
    texts.append((ari_dir / "cgrates_channelAnsweredDestroyed_2016.json").read_text())
    return texts


async def test_ari_websocket_and_stored_recording_download(tmp_path: Path, ari: FakeAri, env: None) -> None:
    if not (CORPUS_EVENTS / "asterisk" / "ari").is_dir():
        pytest.skip("corpus not beside the checkout")
    wav = write_wav(tmp_path / "stored.wav", tone(600, 1.5))
    ari.stored["cgr-call-6"] = wav.read_bytes()
    service, sink = make_service(tmp_path, ari=ari)
    with capture_logs() as logs:
        await service.start()
        await service.wait_connected(ami=False, ari=True)
        for text in ari_texts("1473681228.6", "cgr-call-6"):
            ari.push(text)
        await wait_for(lambda: len(sink.finished) == 1)
        await service.stop()
    assert ari.downloads == ["cgr-call-6"]
    vcon = build_vcon(sink.finished[0])
    assert [p["uuid"] for p in vcon["parties"]] == ["1001", "1002"]
    (d,) = vcon["dialog"]
    assert d["parties"] == 0  # an ARI channel recording holds that channel's party
    n, rate, pcm = wav_channels(d)
    assert n == 1 and abs(dominant_freq(pcm[:, 0], rate) - 600) < 3 and d["duration"] == 1.5
    assert service.metrics()["events_ari"] == 5
    assert_no_secrets(logs, service.metrics(), vcon)


async def test_ari_bad_password_stops(tmp_path: Path, ari: FakeAri, env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ARI_PASSWORD", "nope-wrong-pw")
    service, _sink = make_service(tmp_path, ari=ari)
    await service.start()
    await wait_for(lambda: "ari" in service.fatal_errors)
    await asyncio.sleep(0.3)
    await service.stop()
    assert ari.rejected == 1 and isinstance(service.fatal_errors["ari"], AuthenticationError)
    assert "nope-wrong-pw" not in str(service.fatal_errors["ari"])


async def test_ami_and_ari_for_the_same_call_make_one_vcon(
    tmp_path: Path, ami: FakeAmi, ari: FakeAri, env: None
) -> None:
    if not (CORPUS_EVENTS / "asterisk" / "ari").is_dir():
        pytest.skip("corpus not beside the checkout")
    ari.stored["both-1"] = write_wav(tmp_path / "both.wav", tone(500, 1.0)).read_bytes()
    s, a, _b = sc.answered_call(T0)
    # The AMI view of the cgrates channel: same Uniqueid as the ARI channel id.
    s.msgs = [type(m)(tuple((k, v.replace(a.uid, "1473681228.6")) for k, v in m.fields)) for m in s.msgs]
    hangup_at = next(i for i, m in enumerate(s.msgs) if m.name == "HangupRequest")
    service, sink = make_service(tmp_path, ami=ami, ari=ari)
    await service.start()
    await service.wait_connected(ami=True, ari=True)
    ami.push(b"".join(bytes(m) for m in s.msgs[:hangup_at]))
    for text in ari_texts("1473681228.6", "both-1")[:-1]:
        ari.push(text)
    await wait_for(lambda: ari.downloads == ["both-1"] or service.metrics().get("events_ari", 0) >= 4)
    ami.push(b"".join(bytes(m) for m in s.msgs[hangup_at:]))
    ari.push((CORPUS_EVENTS / "asterisk" / "ari" / "cgrates_channelAnsweredDestroyed_2016.json").read_text())
    await wait_for(lambda: len(sink.finished) >= 1)
    await asyncio.sleep(0.5)
    await service.stop()
    assert len(sink.finished) == 1
    vcon = build_vcon(sink.finished[0])
    assert vcon["parties"][0]["uuid"] == "1001" and vcon["parties"][1]["uuid"] == "1002"
    dialogs = [d for d in vcon["dialog"] if d["type"] == "recording"]
    assert len(dialogs) == 1 and dialogs[0]["encoding"] == "base64url"
    _n, rate, pcm = wav_channels(dialogs[0])
    assert abs(dominant_freq(pcm[:, 0], rate) - 500) < 3


def test_structlog_is_configured_for_capture() -> None:
    assert structlog.get_logger("x") is not None
