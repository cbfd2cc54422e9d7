"""Turn a :class:`~capture.engine.FinishedCall` into a vCon: render audio, fold events, assemble.

Module-level and picklable on purpose: the ingest shell and the daemon run :func:`complete_call` in
a worker process, beside the packet loop (decoding and encoding audio is the heavy part).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from capture.calls import CALLEE, CALLER
from capture.engine import FinishedCall, RenderJob
from capture.recorder import RenderResult, render_recording
from capture.rtpstats import StreamStats
from conversation import events as ev
from conversation.assembler import VENDOR, AssemblyOptions, assemble
from conversation.model import Conversation, ConversationTracker

_CHANNEL_PARTY: tuple[str | None, str | None] = (CALLER, CALLEE)


def media_events(
    job: FinishedCall, result: RenderResult, render: RenderJob | None = None
) -> list[ev.ConversationEvent]:
    """Conversation events derived from the rendered audio: recording, DTMF, quality, reasons.

    ``render`` names the leg and the party of each channel (legs linked across Call-IDs); without
    it the job's own leg, caller on channel 0 and callee on channel 1.
    """
    out: list[ev.ConversationEvent] = []
    at = job.ended_at
    leg = (render.leg if render is not None else "") or job.leg
    channel_party = render.channel_parties if render is not None else _CHANNEL_PARTY
    if result.has_audio:
        out.append(
            ev.RecordingAdded(
                key=job.key,
                at=at,
                leg=leg,
                recording=ev.RecordingRef(
                    start=result.start,
                    duration=result.duration,
                    channels=channel_party,
                    mediatype="audio/x-wav",
                    path=str(result.path) if result.path is not None else None,
                    data=result.wav,
                    filename=Path(render.out_path).name if render is not None else f"{job.leg}.wav",
                    remove_after_use=True,
                ),
            )
        )
    for channel, report in enumerate(result.channel_reports):
        for digit in report.dtmf:
            out.append(
                ev.DigitPressed(
                    key=job.key, at=digit.at, leg=leg, party=channel_party[channel] or CALLER,
                    digit=digit.digit, duration=digit.duration,
                )
            )
    streams: list[dict[str, Any]] = []
    for channel, report in enumerate(result.channel_reports):
        for stats in report.stream_stats:
            item = _stats_item(stats)
            item["channel"] = channel
            item["party"] = channel
            streams.append(item)
    body: dict[str, Any] = {"streams": streams, "sample_rate": result.sample_rate}
    reasons = [r.no_audio_reason for r in result.channel_reports if r.no_audio_reason]
    if not result.has_audio:
        body["no_audio_reason"] = result.no_audio_reason or "; ".join(reasons) or "no RTP seen"
    elif reasons:
        body["channel_notes"] = {str(i): r.no_audio_reason for i, r in enumerate(result.channel_reports)
                                 if r.no_audio_reason}
    out.append(
        ev.AnalysisAdded(
            key=job.key, at=at, type="report", vendor=VENDOR, product=VENDOR, schema="vcon-capture-rtp-quality",
            body=body, legs=(leg,),
        )
    )
    return out


_STATS_FIELDS = tuple(field.name for field in dataclasses.fields(StreamStats))


def _stats_item(stats: StreamStats) -> dict[str, Any]:
    """One stream's statistics as JSON values: floats to 6 decimals, tuples as lists."""
    item: dict[str, Any] = {}
    for name in _STATS_FIELDS:
        value = getattr(stats, name)
        if isinstance(value, float):
            value = round(value, 6)
        elif isinstance(value, tuple):
            value = list(value)
        item[name] = value
    return item


def build_conversation(job: FinishedCall) -> Conversation:
    """Render the call's audio (if answered) and fold every event into a Conversation."""
    events = list(job.events)
    for r in job.renders:
        result = render_recording(
            [list(r.channels[0]), list(r.channels[1])], start=r.start, end=r.end, out_path=Path(r.out_path),
            in_memory=True,
        )
        events.extend(media_events(job, result, r))
        for channel in r.channels:
            for info in channel:
                Path(info.path).unlink(missing_ok=True)
    events.append(ev.ConversationEnded(key=job.key, at=job.ended_at, partial=job.partial,
                                       reason=None if not job.partial else job.reason))
    tracker = ConversationTracker()
    finished: list[Conversation] = []
    for event in events:
        finished.extend(tracker.handle(event))
    return finished[-1]


def complete_call(job: FinishedCall, options: AssemblyOptions, now: float) -> dict[str, Any]:
    """The vCon for one finished call."""
    return assemble(build_conversation(job), options, now=now)
