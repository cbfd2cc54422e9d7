"""Conversation events: what every source (sniffer, Twilio, FreeSWITCH, Asterisk) reports.

A source names its conversation by ``key`` (unique within the source, e.g. ``"sip:<call-id>"``),
its participants by party ids and its call legs by leg ids, all strings of its own choosing. The
tracker in :mod:`conversation.model` folds these events into a :class:`~conversation.model.Conversation`;
the assembler turns party and leg ids into vCon array indices in order of first appearance. A leg
becomes one vCon dialog (a ``recording`` when it was answered, ``incomplete`` otherwise).

Times are seconds since the Unix epoch (floats), taken from the source (packet timestamps, event
headers), never from a clock inside this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Disposition = Literal["no-answer", "congestion", "failed", "busy", "hung-up", "voicemail-no-message"]
"""vCon ``incomplete`` dialog dispositions (draft-ietf-vcon-vcon-core)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyInfo:
    """What is known about a participant; ``None`` fields are unknown and never overwrite known ones."""

    tel: str | None = None
    """Bare E.164 number, ``+15551234567`` (never a ``tel:`` URI, never a short extension)."""
    sip: str | None = None
    """SIP addr-spec, ``sip:alice@example.com``."""
    name: str | None = None
    """Display name."""
    stir: str | None = None
    """STIR PASSporT (compact JWS) from an Identity header."""
    mailto: str | None = None
    uuid: str | None = None
    """A stable participant id (PBX extension, channel owner...)."""
    validation: str | None = None
    """How the identity was validated (e.g. STIR attestation ``A``)."""
    role: str | None = None
    """Free-form role: ``caller``, ``callee``, ``agent``, ``transfer-target``..."""
    sip_user_agent: str | None = None
    sip_contact: str | None = None
    sip_display_name: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()
    """Further vCon party keys (``("org", "Acme")``), emitted as they are."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SipLegInfo:
    """sip-signaling extension fields of a leg (draft-howe-vcon-sip-signaling)."""

    call_id: str
    from_tag: str | None = None
    to_tag: str | None = None
    cseq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRef:
    """A finished recording on disk (or already at a URL) belonging to one leg."""

    start: float
    """Wall time of the first sample."""
    duration: float
    """Seconds."""
    channels: tuple[str | None, ...]
    """Party id per audio channel (``None`` for an unused channel); mono = one element."""
    mixed: tuple[str, ...] = ()
    """For a mono recording that mixes several parties (a PBX's default mix): all their ids.
    The dialog then lists them all (``"parties": [0, 1]``, the flat form the conserver accepts)."""
    mediatype: str = "audio/x-wav"
    path: str | None = None
    """Local file holding the media; the assembler inlines or stores it."""
    data: bytes | None = None
    """The media itself, when it was never written to a file (a short rendered call)."""
    url: str | None = None
    """External location when the media stays elsewhere; needs ``content_hash``."""
    content_hash: str | None = None
    filename: str | None = None
    remove_after_use: bool = False
    """True when the file is ours (a temporary render) and may be deleted once the vCon is built."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationEvent:
    """Base of all events."""

    key: str
    """Conversation id, unique within its source."""
    at: float
    """When it happened, seconds since the epoch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationStarted(ConversationEvent):
    source: str
    """``sip-capture``, ``twilio``, ``freeswitch``, ``asterisk``."""
    subject: str | None = None
    application: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PartySeen(ConversationEvent):
    """A participant, or more facts about one; later non-None fields win."""

    party: str
    info: PartyInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class LegStarted(ConversationEvent):
    """A call leg (one SIP dialog, one provider call/channel) began, e.g. an INVITE was sent."""

    leg: str
    originator: str
    """Party id of the side that placed this leg."""
    parties: tuple[str, ...]
    """Party ids on this leg, caller first."""
    sip: SipLegInfo | None = None
    session_id: tuple[str, str] | None = None
    """RFC 7989 Session-ID (local, remote)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LegSignaling(ConversationEvent):
    """Updated sip-signaling facts (the To tag arrives with the answer)."""

    leg: str
    sip: SipLegInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class LegRinging(ConversationEvent):
    leg: str
    early_media: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LegAnswered(ConversationEvent):
    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LegEnded(ConversationEvent):
    """The leg is over. ``disposition`` only for a leg that never connected."""

    leg: str
    disposition: Disposition | None = None
    reason: str | None = None
    """Human-readable cause (``"486 Busy Here"``, ``"NORMAL_CLEARING"``)."""
    ended_by: str | None = None
    """Party id that hung up, when known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldChanged(ConversationEvent):
    """``party`` was put on hold (``held``) or resumed; per the draft the event names the held party."""

    leg: str
    party: str
    held: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitPressed(ConversationEvent):
    """A DTMF key pressed by ``party``; ``duration`` seconds (keyup at ``at + duration``)."""

    leg: str
    party: str
    digit: str
    duration: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyJoinedLeg(ConversationEvent):
    """A party joined or dropped from a leg (conference, bridge); ``joined`` False = drop."""

    leg: str
    party: str
    joined: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingAdded(ConversationEvent):
    leg: str
    recording: RecordingRef


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferObserved(ConversationEvent):
    """A transfer (RFC 5589 roles); leg ids of the legs involved when known."""

    transferee: str | None = None
    transferor: str | None = None
    transfer_target: str | None = None
    original: str | None = None
    consultation: str | None = None
    target_leg: str | None = None
    kind: str = "blind"
    """``blind`` or ``attended``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisAdded(ConversationEvent):
    """An analysis entry (quality report, reason for missing audio...)."""

    type: str
    vendor: str
    body: Any
    """JSON value (encoding ``json``) or text (encoding ``none``)."""
    legs: tuple[str, ...] = ()
    product: str | None = None
    schema: str | None = None
    mediatype: str = "application/json"
    encoding: str = "json"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentAdded(ConversationEvent):
    purpose: str
    body: Any
    mediatype: str
    encoding: str = "json"
    leg: str | None = None
    party: str | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotated(ConversationEvent):
    """A note about how the conversation was observed (e.g. ``media-match: inferred``)."""

    name: str
    value: Any
    leg: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationEnded(ConversationEvent):
    """No more events will come; ``partial`` when cut short (shutdown, timeout, eviction)."""

    partial: bool = False
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
