"""Build a vCon (draft-ietf-vcon-vcon-core-04) from a finished :class:`Conversation`.

Indices: parties in order of first appearance, then one dialog per leg in order of first
appearance (a leg with several recording segments becomes its member recordings followed by a
``recording-set``), then one ``transfer`` dialog per transfer. Analysis and attachments refer to
those indices. Nothing is reordered afterwards, so every cross reference stays valid.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conversation import events as ev
from conversation.model import Conversation, Leg
from conversation.vcon import VCON_VERSION, b64url, content_hash_bytes, content_hash_file, rfc3339, uuid8

MediaStore = Callable[[Path, str, str], str]
"""``store(path, filename, mediatype) -> url`` for recordings kept outside the vCon."""

VENDOR = "vcon-capture"

_PARTY_KEYS = ("tel", "sip", "stir", "mailto", "name", "uuid", "validation")
_PARTY_SIP_KEYS = ("sip_user_agent", "sip_contact", "sip_display_name")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssemblyOptions:
    domain: str = "vcon-capture.invalid"
    """Domain whose SHA-1 gives the uuid's custom bits (configure a domain you own)."""
    inline_media: bool = True
    """Inline recordings as base64url; otherwise hand them to ``media_store``."""
    media_store: MediaStore | None = None
    lawful_basis: dict[str, Any] | None = None
    """Configured lawful-basis attachment body (draft-howe-vcon-lawful-basis); never invented."""
    remove_rendered_media: bool = True
    """Delete recordings marked ``remove_after_use`` once they are in the vCon."""
    defer_media: bool = False
    """Leave inline recordings as :class:`DeferredBody` markers for a writer that encodes them into
    its file: a large one is read from its file then (a long call's vCon never needs its whole
    recording in memory), a short one is encoded from memory without a JSON string in between."""


@dataclass(frozen=True, slots=True)
class DeferredBody:
    """An inline ``base64url`` body not yet encoded: :func:`materialize` or a streaming writer fills it.

    The media is in a file (``path``) or, for a short recording, in memory (``data``); a writer then
    puts the encoded bytes straight into the file it writes, with no JSON string in between.
    """

    path: str = ""
    remove_after_use: bool = False
    data: bytes | None = None

    def text(self) -> str:
        return b64url(self.data if self.data is not None else Path(self.path).read_bytes())


DEFER_ABOVE = 4 * 1024 * 1024
"""Recordings larger than this (bytes) are deferred when ``defer_media`` is set."""


def materialize(vcon: dict[str, Any]) -> dict[str, Any]:
    """Replace every DeferredBody by its base64url text (removing files marked for it)."""
    for d in vcon.get("dialog", ()):
        body = d.get("body")
        if isinstance(body, DeferredBody):
            d["body"] = body.text()
            if body.remove_after_use and body.path:
                Path(body.path).unlink(missing_ok=True)
    return vcon


@dataclass(slots=True)
class _Indexer:
    parties: dict[str, int] = field(default_factory=dict)
    legs: dict[str, int] = field(default_factory=dict)


def assemble(conv: Conversation, options: AssemblyOptions, *, now: float) -> dict[str, Any]:
    """Return the vCon dict for ``conv``; ``now`` becomes ``created_at``."""
    idx = _Indexer()
    parties = _parties(conv, idx)
    dialogs: list[dict[str, Any]] = []
    for leg in conv.legs.values():
        _leg_dialogs(conv, leg, idx, dialogs, options)
    for transfer in conv.transfers:
        dialogs.append(_transfer_dialog(transfer, idx))

    analysis = [_analysis(a, idx) for a in conv.analysis]
    notes = _notes(conv)
    if notes:
        analysis.append(
            {
                "type": "report",
                "vendor": VENDOR,
                "product": VENDOR,
                "schema": "vcon-capture-notes",
                "dialog": list(range(len(dialogs))) if dialogs else 0,
                "mediatype": "application/json",
                "encoding": "json",
                "body": notes,
            }
        )
    attachments = [_attachment(a, idx, conv) for a in conv.attachments]
    if options.lawful_basis is not None:
        attachments.append(
            {
                "purpose": "lawful_basis",
                "start": rfc3339(conv.started_at),
                "party": 0,
                "dialog": 0,
                "mediatype": "application/json",
                "encoding": "json",
                "body": options.lawful_basis,
            }
        )

    uses_sip = any(leg.sip is not None for leg in conv.legs.values()) or any(
        a.purpose.startswith("sip-") for a in conv.attachments
    )
    vcon: dict[str, Any] = {
        "vcon": VCON_VERSION,
        "uuid": uuid8(options.domain, at=conv.started_at, discriminator=f"{conv.source}/{conv.key}"),
        "created_at": rfc3339(now),
    }
    if conv.subject:
        vcon["subject"] = conv.subject
    if uses_sip:
        vcon["extensions"] = ["sip-signaling"]
    vcon["parties"] = parties
    vcon["dialog"] = dialogs
    vcon["analysis"] = analysis
    vcon["attachments"] = attachments
    return vcon


def _parties(conv: Conversation, idx: _Indexer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for party_id, info in conv.parties.items():
        idx.parties[party_id] = len(out)
        party: dict[str, Any] = {}
        for key in _PARTY_KEYS:
            value = getattr(info, key)
            if value:
                party[key] = value
        for key, value in info.extra:
            party[key] = value
        for key in _PARTY_SIP_KEYS:
            value = getattr(info, key)
            if value:
                party[key] = value
        if info.role:
            party["role"] = info.role
        out.append(party)
    return out


def _pidx(idx: _Indexer, party: str | None) -> int | None:
    return None if party is None else idx.parties.get(party)


def _base_dialog(conv: Conversation, leg: Leg, idx: _Indexer) -> dict[str, Any]:
    d: dict[str, Any] = {}
    parties = [idx.parties[p] for p in leg.parties if p in idx.parties]
    if parties:
        d["parties"] = parties
    origin = _pidx(idx, leg.originator)
    if origin is not None and parties and parties[0] != origin:
        d["originator"] = origin
    if leg.session_id is not None:
        d["session_id"] = {"local": leg.session_id[0], "remote": leg.session_id[1]}
    if conv.application:
        d["application"] = conv.application
    if leg.sip is not None:
        d["sip_call_id"] = leg.sip.call_id
        if leg.sip.from_tag:
            d["sip_from_tag"] = leg.sip.from_tag
        if leg.sip.to_tag:
            d["sip_to_tag"] = leg.sip.to_tag
        if leg.sip.cseq is not None:
            d["sip_cseq"] = leg.sip.cseq
    return d


def _history(leg: Leg, idx: _Indexer) -> list[dict[str, Any]]:
    out = []
    for h in sorted(leg.history, key=lambda h: h.time):
        p = idx.parties.get(h.party)
        if p is None:
            continue
        item: dict[str, Any] = {"party": p, "time": rfc3339(h.time), "event": h.event}
        if h.button is not None:
            item["button"] = h.button
        out.append(item)
    return out


def _leg_dialogs(
    conv: Conversation,
    leg: Leg,
    idx: _Indexer,
    dialogs: list[dict[str, Any]],
    options: AssemblyOptions,
) -> None:
    base = _base_dialog(conv, leg, idx)
    history = _history(leg, idx)
    d: dict[str, Any]
    end = leg.ended_at if leg.ended_at is not None else (conv.ended_at or leg.started_at)

    if not leg.answered:
        d = {"type": "incomplete", "start": rfc3339(leg.started_at)}
        d["duration"] = round(max(end - leg.started_at, 0.0), 3)
        d.update(base)
        d["disposition"] = leg.disposition or "failed"
        if history:
            d["party_history"] = history
        idx.legs[leg.leg_id] = len(dialogs)
        dialogs.append(d)
        return

    answered_at = leg.answered_at if leg.answered_at is not None else leg.started_at
    if not leg.recordings:
        d = {"type": "recording", "start": rfc3339(answered_at)}
        d["duration"] = round(max(end - answered_at, 0.0), 3)
        d.update(base)
        if history:
            d["party_history"] = history
        idx.legs[leg.leg_id] = len(dialogs)
        dialogs.append(d)
        return

    members: list[int] = []
    for rec in leg.recordings:
        d = {"type": "recording", "start": rfc3339(rec.start), "duration": round(rec.duration, 6)}
        d.update(base)
        d["parties"] = [idx.parties.get(p) if p is not None else None for p in rec.channels]
        if len(rec.channels) == 1:
            mixed = [idx.parties[p] for p in rec.mixed if p in idx.parties]
            d["parties"] = mixed if len(mixed) > 1 else d["parties"][0]
        if history and len(leg.recordings) == 1:
            d["party_history"] = history
        d.update(_media(rec, options))
        members.append(len(dialogs))
        dialogs.append(d)
    if len(members) == 1:
        idx.legs[leg.leg_id] = members[0]
        return
    set_index = len(dialogs)
    for m in members:
        dialogs[m]["recording_set"] = set_index
    rs: dict[str, Any] = {"type": "recording-set", "start": rfc3339(answered_at)}
    rs["duration"] = round(max(end - answered_at, 0.0), 3)
    rs.update(base)
    rs["recordings"] = members
    if history:
        rs["party_history"] = history
    idx.legs[leg.leg_id] = set_index
    dialogs.append(rs)


def _media(rec: ev.RecordingRef, options: AssemblyOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"mediatype": rec.mediatype}
    filename = rec.filename or (os.path.basename(rec.path) if rec.path else None)
    if filename:
        out["filename"] = filename
    if rec.url is not None:
        out["url"] = rec.url
        if rec.content_hash:
            out["content_hash"] = rec.content_hash
        return out
    if rec.data is not None:
        if options.inline_media or options.media_store is None:
            out["encoding"] = "base64url"
            out["body"] = DeferredBody(data=rec.data) if options.defer_media else b64url(rec.data)
            return out
        # An external store takes files: write the in-memory media to one first.
        with tempfile.NamedTemporaryFile(suffix=os.path.splitext(filename or "")[1], delete=False) as fh:
            fh.write(rec.data)
        path = Path(fh.name)
        try:
            out["url"] = options.media_store(path, filename or path.name, rec.mediatype)
            out["content_hash"] = content_hash_bytes(rec.data)
        finally:
            path.unlink(missing_ok=True)
        return out
    if rec.path is None:
        return out
    path = Path(rec.path)
    if options.inline_media or options.media_store is None:
        out["encoding"] = "base64url"
        if options.defer_media and path.stat().st_size > DEFER_ABOVE:
            out["body"] = DeferredBody(str(path), rec.remove_after_use and options.remove_rendered_media)
            return out
        out["body"] = b64url(path.read_bytes())
    else:
        out["url"] = options.media_store(path, filename or path.name, rec.mediatype)
        out["content_hash"] = content_hash_file(path)
    if rec.remove_after_use and options.remove_rendered_media:
        path.unlink(missing_ok=True)
    return out


def _transfer_dialog(t: ev.TransferObserved, idx: _Indexer) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "transfer", "start": rfc3339(t.at)}
    for key, party in (("transferee", t.transferee), ("transferor", t.transferor), ("transfer_target", t.transfer_target)):
        p = _pidx(idx, party)
        if p is not None:
            d[key] = p
    for key, leg in (("original", t.original), ("consultation", t.consultation), ("target_dialog", t.target_leg)):
        # The draft's placeholder for a leg we never saw is an empty dialog, which the schema
        # refuses (a dialog needs a type): such a reference is left out instead.
        if leg is not None and leg in idx.legs:
            d[key] = idx.legs[leg]
    return d


def _leg_indices(idx: _Indexer, legs: tuple[str, ...]) -> int | list[int] | None:
    found = [idx.legs[leg] for leg in legs if leg in idx.legs]
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def _analysis(a: ev.AnalysisAdded, idx: _Indexer) -> dict[str, Any]:
    out: dict[str, Any] = {"type": a.type, "vendor": a.vendor}
    dialog = _leg_indices(idx, a.legs)
    if dialog is not None:
        out["dialog"] = dialog
    if a.product:
        out["product"] = a.product
    if a.schema:
        out["schema"] = a.schema
    out["mediatype"] = a.mediatype
    out["encoding"] = a.encoding
    out["body"] = a.body
    return out


def _attachment(a: ev.AttachmentAdded, idx: _Indexer, conv: Conversation) -> dict[str, Any]:
    out: dict[str, Any] = {"purpose": a.purpose, "start": rfc3339(a.at)}
    out["party"] = _pidx(idx, a.party) or 0
    out["dialog"] = idx.legs.get(a.leg, 0) if a.leg is not None else 0
    out["mediatype"] = a.mediatype
    if a.filename:
        out["filename"] = a.filename
    out["encoding"] = a.encoding
    out["body"] = a.body
    return out


def _notes(conv: Conversation) -> dict[str, Any]:
    notes: dict[str, Any] = dict(conv.notes)
    leg_notes = {leg_id: leg.notes for leg_id, leg in conv.legs.items() if leg.notes}
    if leg_notes:
        notes["legs"] = leg_notes
    if conv.partial:
        notes["partial"] = True
        notes["end_reason"] = conv.end_reason
    if conv.anomalies:
        notes["anomalies"] = conv.anomalies[:100]
    return notes
