"""Twilio adapter: status/recording/stream webhooks and Media Streams → one vCon per call.

The daemon builds :class:`TwilioConfig` from the ``twilio:`` config section and mounts
:meth:`TwilioService.routes` on its HTTP server. See ``docs/twilio.md``.
"""

from adapters.twilio.config import TwilioConfig
from adapters.twilio.service import TwilioService

__all__ = ["TwilioConfig", "TwilioService"]
