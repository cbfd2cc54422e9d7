"""Where sources put their conversation events.

Every source (the sniffer engine, the Twilio, FreeSWITCH and Asterisk adapters) is handed a
:class:`ConversationSink` and calls ``emit`` with the events it derived. The daemon's sink folds
them into a :class:`conversation.model.ConversationTracker`, and when a conversation ends it is
assembled into a vCon and put into the durable outbox. Tests use :class:`CollectingSink`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from conversation.events import ConversationEvent
from conversation.model import Conversation, ConversationTracker


class ConversationSink(Protocol):
    def emit(self, events: Sequence[ConversationEvent]) -> None:
        """Accept events in the order they happened. Must not block for long."""


class CollectingSink:
    """Keeps every event and folds them, so tests can look at both."""

    def __init__(self) -> None:
        self.events: list[ConversationEvent] = []
        self.tracker = ConversationTracker()
        self.finished: list[Conversation] = []

    def emit(self, events: Sequence[ConversationEvent]) -> None:
        for event in events:
            self.events.append(event)
            self.finished.extend(self.tracker.handle(event))
