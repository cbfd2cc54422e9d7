"""The conversation model and the vCon assembler, from events to a schema-valid vCon."""

from __future__ import annotations

import base64
import hashlib
import uuid as uuidlib
from pathlib import Path

import pytest

from conversation import events as ev
from conversation.assembler import AssemblyOptions, assemble
from conversation.model import ConversationTracker
from conversation.vcon import b64url, b64url_decode, content_hash_bytes, domain_bits, rfc3339, uuid8
from tests.vcon_checks import validate_vcon

K = "test:1"


def fold(events: list[ev.ConversationEvent]):  # type: ignore[no-untyped-def]
    tracker = ConversationTracker()
    done = []
    for e in events:
        done += tracker.handle(e)
    return done


def basic_call(*, answered: bool = True, end: float = 60.0) -> list[ev.ConversationEvent]:
    out: list[ev.ConversationEvent] = [
        ev.ConversationStarted(key=K, at=0.0, source="test"),
        ev.PartySeen(key=K, at=0.0, party="a", info=ev.PartyInfo(tel="+15551230001", name="Alice")),
        ev.PartySeen(key=K, at=0.0, party="b", info=ev.PartyInfo(sip="sip:bob@example.com")),
        ev.LegStarted(key=K, at=0.0, leg="l1", originator="a", parties=("a", "b"),
                      sip=ev.SipLegInfo(call_id="c1", from_tag="f", cseq=1)),
        ev.LegRinging(key=K, at=1.0, leg="l1"),
    ]
    if answered:
        out.append(ev.LegAnswered(key=K, at=5.0, leg="l1"))
        out.append(ev.LegEnded(key=K, at=end, leg="l1"))
    else:
        out.append(ev.LegEnded(key=K, at=end, leg="l1", disposition="no-answer"))
    return out


def test_uuid8_layout() -> None:
    u = uuidlib.UUID(uuid8("example.com", at=1_700_000_000.123, discriminator="x"))
    assert u.version == 8 and u.variant == uuidlib.RFC_4122
    assert u.int >> 80 == 1_700_000_000_123
    assert u.int & ((1 << 62) - 1) == domain_bits("example.com")
    expected = int.from_bytes(hashlib.sha1(b"example.com").digest()[:8], "big") & ((1 << 62) - 1)
    assert domain_bits("example.com") == expected
    # deterministic per conversation, different across conversations and domains
    assert uuid8("example.com", at=1.0, discriminator="x") == uuid8("example.com", at=1.0, discriminator="x")
    assert uuid8("example.com", at=1.0, discriminator="x") != uuid8("example.com", at=1.0, discriminator="y")
    assert uuid8("example.com", at=1.0, discriminator="x") != uuid8("example.org", at=1.0, discriminator="x")


def test_encodings() -> None:
    for data in (b"", b"a", b"ab", b"abc", bytes(range(256))):
        text = b64url(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data
    digest = hashlib.sha512(b"hello").digest()
    assert content_hash_bytes(b"hello") == "sha512-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"


def test_rfc3339_truncates_to_milliseconds_in_utc() -> None:
    assert rfc3339(1_795_623_616.4219) == "2026-11-25T16:20:16.421Z"  # truncated, not rounded
    assert rfc3339(1_795_623_616.0) == "2026-11-25T16:20:16.000Z"
    assert rfc3339(1_795_623_616.9999996) == "2026-11-25T16:20:17.000Z"  # microseconds round first
    assert rfc3339(-0.25) == "1969-12-31T23:59:59.750Z"


def test_answered_call_without_media_is_a_recording_dialog() -> None:
    (conv,) = fold([*basic_call(), ev.ConversationEnded(key=K, at=60.0)])
    vcon = assemble(conv, AssemblyOptions(domain="example.com"), now=100.0)
    validate_vcon(vcon)
    d = vcon["dialog"][0]
    assert d["type"] == "recording" and d["duration"] == 55.0 and d["parties"] == [0, 1]
    assert "originator" not in d  # the first party placed the call
    assert d["sip_call_id"] == "c1" and vcon["extensions"] == ["sip-signaling"]
    assert vcon["parties"][0] == {"tel": "+15551230001", "name": "Alice"}
    assert vcon["created_at"] == rfc3339(100.0)
    for key in ("group", "meta", "redacted", "mimetype"):
        assert key not in vcon


def test_unanswered_call_is_incomplete_with_disposition() -> None:
    (conv,) = fold([*basic_call(answered=False, end=30.0), ev.ConversationEnded(key=K, at=30.0)])
    vcon = assemble(conv, AssemblyOptions(), now=100.0)
    validate_vcon(vcon)
    assert vcon["dialog"][0]["type"] == "incomplete"
    assert vcon["dialog"][0]["disposition"] == "no-answer"


def test_originator_only_when_not_the_first_party() -> None:
    events = basic_call()
    events[3] = ev.LegStarted(key=K, at=0.0, leg="l1", originator="b", parties=("a", "b"))
    (conv,) = fold([*events, ev.ConversationEnded(key=K, at=60.0)])
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    assert vcon["dialog"][0]["originator"] == 1


def _wav(tmp_path: Path, name: str) -> str:
    p = tmp_path / name
    p.write_bytes(b"RIFF....WAVEfmt fake")
    return str(p)


def test_stereo_mixed_and_segmented_recordings(tmp_path: Path) -> None:
    seg1 = ev.RecordingRef(start=5.0, duration=30.0, channels=("a", "b"), path=_wav(tmp_path, "s1.wav"))
    seg2 = ev.RecordingRef(start=35.0, duration=25.0, channels=("a", "b"), path=_wav(tmp_path, "s2.wav"),
                           remove_after_use=True)
    events = [*basic_call(), ev.RecordingAdded(key=K, at=35.0, leg="l1", recording=seg1),
              ev.RecordingAdded(key=K, at=60.0, leg="l1", recording=seg2),
              ev.HoldChanged(key=K, at=10.0, leg="l1", party="b", held=True),
              ev.ConversationEnded(key=K, at=60.0)]
    (conv,) = fold(events)
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    validate_vcon(vcon)
    d0, d1, rs = vcon["dialog"]
    assert d0["parties"] == [0, 1] and d0["recording_set"] == 2 and d1["recording_set"] == 2
    assert rs["type"] == "recording-set" and rs["recordings"] == [0, 1]
    assert rs["party_history"] == [{"party": 1, "time": rfc3339(10.0), "event": "hold"}]
    assert b64url_decode(d0["body"]) == b"RIFF....WAVEfmt fake" and d0["encoding"] == "base64url"
    assert not Path(seg2.path or "").exists()  # rendered media removed once inlined
    assert Path(seg1.path or "").exists()

    mono = ev.RecordingRef(start=5.0, duration=55.0, channels=("a",), mixed=("a", "b"), path=_wav(tmp_path, "m.wav"))
    (conv,) = fold([*basic_call(), ev.RecordingAdded(key=K, at=60.0, leg="l1", recording=mono),
                    ev.ConversationEnded(key=K, at=60.0)])
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    validate_vcon(vcon)
    assert vcon["dialog"][0]["parties"] == [0, 1]


def test_external_media_reference(tmp_path: Path) -> None:
    stored: list[tuple[str, str]] = []

    def store(path: Path, filename: str, mediatype: str) -> str:
        stored.append((filename, mediatype))
        return f"https://media.example.com/{filename}"

    rec = ev.RecordingRef(start=5.0, duration=55.0, channels=("a", "b"), path=_wav(tmp_path, "r.wav"))
    (conv,) = fold([*basic_call(), ev.RecordingAdded(key=K, at=60.0, leg="l1", recording=rec),
                    ev.ConversationEnded(key=K, at=60.0)])
    vcon = assemble(conv, AssemblyOptions(inline_media=False, media_store=store), now=1.0)
    validate_vcon(vcon)
    d = vcon["dialog"][0]
    assert d["url"] == "https://media.example.com/r.wav" and "body" not in d
    assert d["content_hash"] == content_hash_bytes(b"RIFF....WAVEfmt fake")
    assert stored == [("r.wav", "audio/x-wav")]


def test_transfer_dialog_indices_and_placeholder() -> None:
    events = [*basic_call(),
              ev.PartySeen(key=K, at=20.0, party="c", info=ev.PartyInfo(tel="+15559990000")),
              ev.LegStarted(key=K, at=20.0, leg="l2", originator="b", parties=("b", "c")),
              ev.LegAnswered(key=K, at=21.0, leg="l2"),
              ev.LegEnded(key=K, at=40.0, leg="l2"),
              ev.TransferObserved(key=K, at=40.0, transferee="a", transferor="b", transfer_target="c",
                                  original="l1", consultation="l2", target_leg="l3", kind="attended"),
              ev.ConversationEnded(key=K, at=60.0)]
    (conv,) = fold(events)
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    validate_vcon(vcon)
    t = vcon["dialog"][2]
    assert t["type"] == "transfer"
    assert (t["transferee"], t["transferor"], t["transfer_target"]) == (0, 1, 2)
    assert (t["original"], t["consultation"]) == (0, 1)
    # The leg never seen is left out (the draft's empty placeholder dialog fails the schema).
    assert "target_dialog" not in t and len(vcon["dialog"]) == 3
    assert "parties" not in t


def test_dtmf_is_keydown_then_keyup() -> None:
    (conv,) = fold([*basic_call(), ev.DigitPressed(key=K, at=10.0, leg="l1", party="a", digit="7", duration=0.25),
                    ev.ConversationEnded(key=K, at=60.0)])
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    assert vcon["dialog"][0]["party_history"] == [
        {"party": 0, "time": rfc3339(10.0), "event": "keydown", "button": "7"},
        {"party": 0, "time": rfc3339(10.25), "event": "keyup", "button": "7"},
    ]


def test_lawful_basis_only_when_configured() -> None:
    (conv,) = fold([*basic_call(), ev.ConversationEnded(key=K, at=60.0)])
    assert all(a["purpose"] != "lawful_basis" for a in assemble(conv, AssemblyOptions(), now=1.0)["attachments"])
    basis = {"lawful_basis": "consent", "expiration": "2027-01-01T00:00:00Z", "purpose_grants": []}
    vcon = assemble(conv, AssemblyOptions(lawful_basis=basis), now=1.0)
    validate_vcon(vcon)
    (att,) = [a for a in vcon["attachments"] if a["purpose"] == "lawful_basis"]
    assert att["encoding"] == "json" and att["body"] == basis


def test_out_of_order_events_are_anomalies_not_errors() -> None:
    events = [*basic_call(), ev.LegAnswered(key=K, at=70.0, leg="l1"),
              ev.LegRinging(key=K, at=71.0, leg="ghost"), ev.ConversationEnded(key=K, at=80.0)]
    (conv,) = fold(events)
    assert any("LegAnswered in state ended" in a for a in conv.anomalies)
    assert any("unknown leg ghost" in a for a in conv.anomalies)
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    validate_vcon(vcon)
    notes = next(a for a in vcon["analysis"] if a["schema"] == "vcon-capture-notes")
    assert notes["body"]["anomalies"]


def test_partial_conversation_closes_open_legs() -> None:
    events = basic_call()[:-1]  # no LegEnded
    (conv,) = fold([*events, ev.ConversationEnded(key=K, at=30.0, partial=True, reason="shutdown")])
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    validate_vcon(vcon)
    assert vcon["dialog"][0]["duration"] == 25.0
    notes = next(a for a in vcon["analysis"] if a["schema"] == "vcon-capture-notes")["body"]
    assert notes["partial"] is True and notes["end_reason"] == "shutdown"


def test_tracker_caps_conversations() -> None:
    tracker = ConversationTracker(max_conversations=3)
    finished = []
    for i in range(5):
        finished += tracker.handle(ev.ConversationStarted(key=f"k{i}", at=float(i), source="t"))
    assert len(tracker.active) == 3 and tracker.evicted == 2
    assert [c.key for c in finished] == ["k0", "k1"] and all(c.partial for c in finished)


@pytest.mark.parametrize("disposition", ["no-answer", "congestion", "failed", "busy", "hung-up",
                                         "voicemail-no-message"])
def test_every_disposition_validates(disposition: ev.Disposition) -> None:
    events = basic_call(answered=False)
    events[-1] = ev.LegEnded(key=K, at=60.0, leg="l1", disposition=disposition)
    (conv,) = fold([*events, ev.ConversationEnded(key=K, at=60.0)])
    vcon = assemble(conv, AssemblyOptions(), now=1.0)
    validate_vcon(vcon)
    assert vcon["dialog"][0]["disposition"] == disposition
