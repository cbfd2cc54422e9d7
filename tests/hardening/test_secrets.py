"""Secrets never leave the daemon: one in-process daemon with every adapter configured with known secrets.

The daemon (``vcon_capture.daemon.Daemon(load_config(...))``) talks to a fake FreeSWITCH event socket,
a fake Asterisk AMI and ARI, and takes signed (and forged) Twilio webhooks and FreeSWITCH CDR posts
(good and bad basic auth). Every log line, ``/metrics``, ``/healthz``, every refusal's body, the vCons
written and every other file the daemon wrote are scanned for the secrets (and their base64 forms).
Also checked end to end: a recording path outside the configured roots is refused, and ``/metrics``
and ``/healthz`` carry no call content (numbers, names, Call-IDs).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from tests.adapters_asterisk.scenarios import answered_call as ami_answered_call
from tests.adapters_asterisk.servers import FakeAmi, FakeAri
from tests.adapters_freeswitch.support import FakeEsl, answered_call, frames
from tests.adapters_twilio.support import ACCOUNT, PUBLIC, VOICE, form_lines, signed_headers
from tests.daemon.test_daemon_watch import free_port
from vcon_capture.config import load_config
from vcon_capture.daemon import Daemon

SECRETS = {
    "HZ_FS_ESL_PW": "fs-esl-Secr3t-8d1e",
    "HZ_FS_CDR_PW": "fs-cdr-Secr3t-77aa",
    "HZ_AMI_SECRET": "ami-Secr3t-41c9",
    "HZ_ARI_PASSWORD": "ari-Secr3t-be02",
    "HZ_TWILIO_TOKEN": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
}


def _forms(value: str) -> list[str]:
    """The secret and the encodings a careless log line would use."""
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b64encode(b"fs:" + raw).decode(), base64.b64encode(b"vcon:" + raw).decode()]


async def _until(pred: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


async def test_no_secret_in_any_output(tmp_path: Path, secrets_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fs_roots = tmp_path / "fs-rec"
    ast_roots = tmp_path / "ast-rec"
    fs_roots.mkdir()
    ast_roots.mkdir()
    (tmp_path / "outside").mkdir()
    port = free_port()
    t0 = 1_767_261_600.0
    outside = str(tmp_path / "outside" / "x.wav")
    (tmp_path / "outside" / "x.wav").write_bytes(b"RIFF")
    esl_events = frames(answered_call())
    ami = FakeAmi("vcon", SECRETS["HZ_AMI_SECRET"])
    ari = FakeAri("vcon", SECRETS["HZ_ARI_PASSWORD"], "vcon-capture")
    await ami.start()
    await ari.start()
    responses: list[str] = []
    async with FakeEsl(SECRETS["HZ_FS_ESL_PW"], scripts=[esl_events]) as esl:
        config_path = tmp_path / "daemon.yaml"
        config_path.write_text(f"""
domain: test.vcon-capture.invalid
outputs:
  - {tmp_path / 'vcons'}
spool: {tmp_path / 'outbox'}
state_dir: {tmp_path / 'state'}
http:
  listen: 127.0.0.1:{port}
shutdown_grace: 1
freeswitch:
  esl: {{host: 127.0.0.1, port: {esl.port}, password_env: HZ_FS_ESL_PW,
        reconnect: {{min_seconds: 0.05, max_seconds: 0.2}}}}
  cdr: {{enabled: true, username: fs, password_env: HZ_FS_CDR_PW, wait_seconds: 0.5}}
  recordings: {{roots: ["{fs_roots}"], poll_seconds: 0.05, wait_seconds: 0.5}}
asterisk:
  end_linger_seconds: 0.2
  ami: {{host: 127.0.0.1, port: {ami.port}, username: vcon, secret_env: HZ_AMI_SECRET,
        reconnect: {{min_seconds: 0.05, max_seconds: 0.2}}}}
  ari: {{url: "http://127.0.0.1:{ari.port}", username: vcon, password_env: HZ_ARI_PASSWORD, app: vcon-capture,
        reconnect: {{min_seconds: 0.05, max_seconds: 0.2}}}}
  recordings: {{roots: ["{ast_roots}"], poll_seconds: 0.05, wait_seconds: 0.5}}
twilio:
  account_sid: {ACCOUNT}
  auth_token_env: HZ_TWILIO_TOKEN
  public_url: {PUBLIC}
  linger: 0.2
""")
        daemon = Daemon(load_config(config_path))
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(daemon.run(stop))
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async def get(path: str) -> tuple[int, str]:
                    async with http.get(base + path) as r:
                        return r.status, await r.text()

                await _until(lambda: daemon.pipeline is not None and len(daemon.services) == 3)
                for _ in range(100):
                    try:
                        if (await get("/healthz"))[0] == 200:
                            break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)
                # Asterisk: a whole call over AMI, its MixMonitor file outside the roots (refused).
                script, _, _ = ami_answered_call(t0, rec=outside)
                await _until(lambda: ami.logins >= 1)
                ami.push(script.wire())
                # Twilio: the corpus voice callbacks signed, then a forged and an unsigned one.
                status_url = "/twilio/voice/status"
                for pairs in form_lines(VOICE)[:4]:
                    headers = signed_headers(PUBLIC + status_url, pairs, token=SECRETS["HZ_TWILIO_TOKEN"])
                    async with http.post(base + status_url, data=pairs, headers=headers) as r:
                        assert r.status == 204, await r.text()
                pairs = form_lines(VOICE)[0]
                forged = signed_headers(PUBLIC + status_url, pairs, token="not-the-token")
                async with http.post(base + status_url, data=pairs, headers=forged) as r:
                    assert r.status == 403
                    responses.append(await r.text())
                async with http.post(base + status_url, data=pairs) as r:
                    assert r.status == 403
                    responses.append(await r.text())
                # FreeSWITCH CDR: wrong password, then the right one with junk.
                wrong = base64.b64encode(b"fs:" + SECRETS["HZ_FS_CDR_PW"].encode() + b"x").decode()
                async with http.post(base + "/freeswitch/cdr", data=b"{}",
                                     headers={"Authorization": f"Basic {wrong}"}) as r:
                    assert r.status == 401
                    responses.append(await r.text())
                good = base64.b64encode(b"fs:" + SECRETS["HZ_FS_CDR_PW"].encode()).decode()
                async with http.post(base + "/freeswitch/cdr", data=b"{nope",
                                     headers={"Authorization": f"Basic {good}",
                                              "Content-Type": "application/json"}) as r:
                    assert r.status == 400
                    responses.append(await r.text())
                # Oversized body to the webhook: refused by the server limit, counted.
                async with http.post(base + "/freeswitch/cdr", data=io.BytesIO(b"x" * (daemon.config.http.max_body + 10)),
                                     headers={"Authorization": f"Basic {good}"}) as r:
                    assert r.status == 413
                await _until(lambda: daemon.pipeline is not None and daemon.pipeline.vcons_built >= 2, 15)
                metrics = (await get("/metrics"))[1]
                health = (await get("/healthz"))[1]
            stop.set()
            await asyncio.wait_for(task, 30)
    await ami.close()
    await ari.close()

    vcon_texts = [p.read_text() for p in (tmp_path / "vcons").rglob("*") if p.is_file()]
    assert len(vcon_texts) >= 2
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*")
                       if p.is_file() and p != config_path)
    blobs = {
        "logs": json.dumps(logs, default=str), "stdlib logs": caplog.text, "metrics": metrics, "healthz": health,
        "responses": "\n".join(responses), "vcons": "\n".join(vcon_texts), "config repr": repr(daemon.config),
        "esl commands": " ".join(esl.commands), "files": written.decode("latin-1"),
    }
    for name, value in SECRETS.items():
        for form in _forms(value):
            for where, blob in blobs.items():
                assert form not in blob, f"{name} ({form}) found in {where}"

    # /metrics and /healthz: counts only, no call content.
    for blob in (metrics, health):
        for content in ("1001", "1002", "Alice", "+1501", "CA0", A_CALL_ID_FRAGMENT, outside, str(fs_roots)):
            assert content not in blob.replace("vcon_capture", ""), content
    assert 'vcon_capture_http_refused_total{reason="too-large"} 1' in metrics
    assert 'adapter="twilio"' in metrics
    # The MixMonitor path outside the roots was refused (no recording dialog in the Asterisk vCon).
    ast = [json.loads(t) for t in vcon_texts if "PJSIP/1001" in t]
    assert len(ast) == 1
    assert not [d for d in ast[0]["dialog"] if "body" in d or "url" in d]
    assert 'vcon_capture_adapter_recordings_refused_outside_roots{adapter="asterisk"} 1' in metrics


A_CALL_ID_FRAGMENT = "@"  # SIP Call-IDs and URIs carry '@'; counters never do
