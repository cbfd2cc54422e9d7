"""Shared helpers: corpus events, sequences built from them, a fake event-socket server, WAV files."""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from adapters.freeswitch.esl import EslEvent, frame_message, parse_event_plain
from conversation.assembler import AssemblyOptions, assemble
from conversation.model import Conversation
from tests.conftest import CORPUS_EVENTS
from tests.vcon_checks import validate_vcon

FS = CORPUS_EVENTS / "freeswitch"
HOLD_2018 = FS / "cgrates_CHANNEL_HANGUP_COMPLETE_2018_g722_hold.esl"
XFER_2015 = FS / "cgrates_CHANNEL_HANGUP_COMPLETE_2015_speex_blindxfer.esl"
REC_START = FS / "CONSTRUCTED_RECORD_START_2018_g722_hold.esl"
REC_STOP = FS / "CONSTRUCTED_RECORD_STOP_2018_g722_hold.esl"
CDR_2018 = FS / "cgrates_mod_json_cdr_2018_g722_hold.json"
CDR_FSDEV1 = FS / "cgrates_mod_json_cdr_fsdev1.json"

A_UUID = "5a3a1d91-90d3-4db4-af5c-cc3ae15d93a4"
B_UUID = "9c1afb4f-1d4a-4e45-84a3-d25721981bf5"
SIP_CALL_ID = "985e365faa0ec79a7fa75d001ef2449f@0:0:0:0:0:0:0:0"
T0 = 1521025758.006702
"""Creation time of the 2018 A leg."""


def corpus_event(path: Path) -> EslEvent:
    return parse_event_plain(path.read_bytes(), tolerant=path.name.startswith("webitel"))


def usec(t: float) -> str:
    return str(round(t * 1e6))


_TIME_HEADERS = (
    "Caller-Channel-Answered-Time",
    "Caller-Channel-Progress-Time",
    "Caller-Channel-Progress-Media-Time",
    "Caller-Channel-Hangup-Time",
    "Caller-Channel-Bridged-Time",
    "Caller-Channel-Last-Hold",
    "Caller-Channel-Hold-Accum",
)


def a_leg(name: str, at: float, *, answered: float = 0.0, hangup: float = 0.0, progress: float = 0.0,
          uuid: str = A_UUID, **extra: str | None) -> EslEvent:
    """An event of the 2018 A leg (1001 -> 1002), its channel times set for this point of the call.

    The base is the real hangup event (all its variables); hangup-only variables are dropped for
    events before the hangup. ``extra`` sets headers (``None`` removes one; ``_`` stands for ``-``).
    """
    headers = dict(corpus_event(HOLD_2018).headers)
    # The real call had a dialplan transfer; sequences state their own transfers.
    for key in ("variable_transfer_source", "Caller-Transfer-Source"):
        headers.pop(key, None)
    if not name.startswith("CHANNEL_HANGUP"):
        for key in ("variable_transfer_history", "variable_hold_events", "variable_sip_hangup_disposition",
                    "variable_hangup_cause", "Hangup-Cause"):
            headers.pop(key, None)
        headers["Answer-State"] = "answered" if answered else "ringing"
    headers["Event-Name"] = name
    headers["Event-Date-Timestamp"] = usec(at)
    headers["Unique-ID"] = headers["Caller-Unique-ID"] = headers["variable_uuid"] = uuid
    headers["Channel-Call-UUID"] = headers["variable_call_uuid"] = uuid
    for key in _TIME_HEADERS:
        headers[key] = "0"
    headers["Caller-Channel-Created-Time"] = usec(T0 if uuid == A_UUID else at)
    for suffix, t in (("Answered", answered), ("Hangup", hangup), ("Progress", progress),
                      ("Bridged", answered)):
        headers[f"Caller-Channel-{suffix}-Time"] = usec(t) if t else "0"
    if not answered:
        for key in [k for k in headers if k.startswith("Other-")]:
            del headers[key]
        for key in ("variable_bridge_uuid", "variable_signal_bond", "variable_last_bridge_to",
                    "variable_sip_to_tag"):
            headers.pop(key, None)
    else:
        headers["Other-Leg-Channel-Answered-Time"] = usec(answered)
        headers["Other-Leg-Channel-Created-Time"] = usec(T0 + 0.04)
    _apply(headers, extra)
    return EslEvent(headers=headers)


def b_leg(name: str, at: float, *, answered: float = 0.0, hangup: float = 0.0, progress: float = 0.0,
          uuid: str = B_UUID, destination: str = "1002", **extra: str | None) -> EslEvent:
    """An event of the B leg FreeSWITCH originated to ``destination`` for the 2018 A leg."""
    headers: dict[str, str] = {
        "Event-Name": name,
        "Core-UUID": "63e2315b-d538-4dfa-9ed5-af73ba6210b6",
        "FreeSWITCH-Hostname": "teo",
        "Event-Date-Timestamp": usec(at),
        "Unique-ID": uuid,
        "Caller-Unique-ID": uuid,
        "Channel-Call-UUID": A_UUID,
        "Call-Direction": "outbound",
        "Channel-Name": f"sofia/internal/{destination}@192.168.56.1:5060",
        "Answer-State": "answered" if answered else "ringing",
        "Caller-Caller-ID-Name": "Extension 1001",
        "Caller-Caller-ID-Number": "1001",
        "Caller-Callee-ID-Name": "Outbound Call",
        "Caller-Callee-ID-Number": destination,
        "Caller-Destination-Number": destination,
        "Caller-Channel-Created-Time": usec(T0 + 0.04),
        "Caller-Channel-Answered-Time": usec(answered) if answered else "0",
        "Caller-Channel-Progress-Time": usec(progress) if progress else "0",
        "Caller-Channel-Hangup-Time": usec(hangup) if hangup else "0",
        "Other-Type": "originator",
        "Other-Leg-Unique-ID": A_UUID,
        "Other-Leg-Caller-ID-Name": "1001",
        "Other-Leg-Caller-ID-Number": "1001",
        "variable_direction": "outbound",
        "variable_originating_leg_uuid": A_UUID,
        "variable_sip_call_id": f"b-{uuid[:8]}@192.168.56.202",
        "variable_sip_from_tag": "Fb12",
        "variable_sip_to_user": destination,
        "variable_sip_to_host": "192.168.56.202",
        "variable_sip_user_agent": "Jitsi2.10.5550Linux",
    }
    _apply(headers, extra)
    return EslEvent(headers=headers)


def _apply(headers: dict[str, str], extra: dict[str, str | None]) -> None:
    for key, value in extra.items():
        name = key.replace("__", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value


def answered_call(start: float = T0) -> list[EslEvent]:
    """CREATE/ANSWER/BRIDGE/HANGUP_COMPLETE for both legs of a 1001 -> 1002 call (20 s talk)."""
    ans, end = start + 9.76, start + 30.36
    return [
        a_leg("CHANNEL_CREATE", start),
        b_leg("CHANNEL_CREATE", start + 0.04),
        b_leg("CHANNEL_ANSWER", ans, answered=ans, progress=start + 0.11),
        a_leg("CHANNEL_ANSWER", ans, answered=ans),
        a_leg("CHANNEL_BRIDGE", ans, answered=ans, Bridge__A__Unique__ID=A_UUID, Bridge__B__Unique__ID=B_UUID),
        a_leg("CHANNEL_HANGUP_COMPLETE", end, answered=ans, hangup=end, variable_hold_events=None,
              variable_transfer_history=None),
        b_leg("CHANNEL_HANGUP_COMPLETE", end + 0.01, answered=ans, hangup=end + 0.01,
              Hangup__Cause="NORMAL_CLEARING", variable_sip_hangup_disposition="send_bye"),
    ]


def unanswered_call(cause: str, *, a_cause: str | None = None, start: float = T0) -> list[EslEvent]:
    """The caller's call to 1002 never answered: the B leg ends with ``cause``."""
    end = start + 8.0
    return [
        a_leg("CHANNEL_CREATE", start),
        b_leg("CHANNEL_CREATE", start + 0.04),
        b_leg("CHANNEL_PROGRESS", start + 0.2, progress=start + 0.2),
        b_leg("CHANNEL_HANGUP_COMPLETE", end, progress=start + 0.2, hangup=end, Hangup__Cause=cause),
        a_leg("CHANNEL_HANGUP_COMPLETE", end + 0.01, hangup=end + 0.01,
              Hangup__Cause=a_cause or cause, variable_transfer_history=None, variable_hold_events=None, variable_sip_hangup_disposition=None),
    ]


def vcon_of(conv: Conversation, **options: Any) -> dict[str, Any]:
    vcon = assemble(conv, AssemblyOptions(**options), now=2_000_000_000.0)
    validate_vcon(vcon)
    return vcon


def write_stereo_wav(path: Path, *, left_hz: float, right_hz: float, seconds: float = 1.0,
                     rate: int = 8000) -> None:
    """A stereo s16 WAV with one tone per channel (FreeSWITCH RECORD_STEREO layout: read left)."""
    t = np.arange(int(seconds * rate)) / rate
    left = (8000 * np.sin(2 * np.pi * left_hz * t)).astype(np.int16)
    right = (8000 * np.sin(2 * np.pi * right_hz * t)).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.stack([left, right], axis=1).astype("<i2").tobytes())


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


# -- a fake FreeSWITCH event socket -----------------------------------------------------------------


@dataclass
class FakeEsl:
    """Speaks mod_event_socket on 127.0.0.1: auth/request, command/reply, then scripted events.

    ``scripts`` holds one list of frames per connection (bytes to send after the subscription);
    a script ending with ``DROP`` closes the socket (a dropped connection), otherwise the socket stays
    open until the client goes.
    """

    password: str
    scripts: list[list[bytes]] = field(default_factory=list)
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _read_command(self, reader: asyncio.StreamReader) -> str:
        data = await reader.readuntil(b"\n\n")
        text = data.decode().strip()
        self.commands.append("auth ***" if text.startswith("auth ") else text)
        return text

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        try:
            writer.write(frame_message("auth/request"))
            await writer.drain()
            auth = await self._read_command(reader)
            if auth != f"auth {self.password}":
                writer.write(frame_message("command/reply", headers={"Reply-Text": "-ERR invalid"}))
                await writer.drain()
                writer.close()
                return
            writer.write(frame_message("command/reply", headers={"Reply-Text": "+OK accepted"}))
            await writer.drain()
            sub = await self._read_command(reader)
            ok = sub.startswith(("event plain ", "event json "))
            writer.write(frame_message("command/reply",
                                       headers={"Reply-Text": "+OK event listener enabled plain" if ok
                                                else "-ERR no keywords supplied"}))
            await writer.drain()
            script = self.scripts[index] if index < len(self.scripts) else []
            for frame in script:
                if frame == DROP:
                    writer.close()
                    return
                writer.write(frame)
                await writer.drain()
            await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


DROP = b"<drop>"


def frames(events: Iterable[EslEvent]) -> list[bytes]:
    """Each event as a ``text/event-plain`` envelope."""
    return [frame_message("text/event-plain", bytes(e)) for e in events]
