"""FreeSWITCH adapter: event socket (inbound mode), mod_json_cdr posts and recordings -> conversation events.

Modules: :mod:`.config` (the ``freeswitch:`` section), :mod:`.esl` (event-socket framing, sans-IO),
:mod:`.cdr` (mod_json_cdr documents), :mod:`.machine` (events and CDRs -> conversation events,
sans-IO), :mod:`.recordings` (reading finished recordings under the configured roots) and
:mod:`.service` (the asyncio shell the daemon runs).
"""
