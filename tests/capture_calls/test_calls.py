"""The SIP call machine, stepped by hand from now = 0.0 (style.md: machines run in fixed ticks)."""

from __future__ import annotations

from capture.calls import CallAnswered, CallDone, CallOptions, CallStarted, CallTracker, MediaUpdated
from capture.sip import SipMessage
from conversation import events as ev
from conversation.assembler import AssemblyOptions, assemble
from conversation.model import ConversationTracker
from tests.vcon_checks import validate_vcon

A = ("192.0.2.10", 5060)
B = ("198.51.100.20", 5060)
CALL_ID = "abc123@192.0.2.10"


def sdp(addr: str, port: int, direction: str = "sendrecv", codecs: str = "0 101") -> str:
    lines = ["v=0", f"o=- 1 1 IN IP4 {addr}", "s=-", f"c=IN IP4 {addr}", "t=0 0", f"m=audio {port} RTP/AVP {codecs}",
             "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def msg(start: str, *, cseq: str, from_tag: str = "ft1", to_tag: str | None = None, body: str = "",
        ctype: str = "application/sdp", branch: str = "z9hG4bK1", extra: tuple[str, ...] = (),
        from_uri: str = '"Alice Smith" <sip:+15551230001@example.com>',
        to_uri: str = "<sip:+15559870002@example.com>") -> SipMessage:
    to = to_uri + (f";tag={to_tag}" if to_tag else "")
    headers = [
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}",
        f"From: {from_uri};tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {CALL_ID}",
        f"CSeq: {cseq}",
        "Contact: <sip:alice@192.0.2.10:5060>",
        *extra,
    ]
    if body:
        headers.append(f"Content-Type: {ctype}")
    headers.append(f"Content-Length: {len(body.encode())}")
    return SipMessage.parse(("\r\n".join([start, *headers]) + "\r\n\r\n" + body).encode())


def invite(**kw: object) -> SipMessage:
    return msg("INVITE sip:+15559870002@example.com SIP/2.0", cseq="1 INVITE",
               body=sdp("192.0.2.10", 4000), **kw)  # type: ignore[arg-type]


def response(status: str, *, cseq: str = "1 INVITE", to_tag: str | None = "tt1", body: str = "",
             extra: tuple[str, ...] = ()) -> SipMessage:
    return msg(f"SIP/2.0 {status}", cseq=cseq, to_tag=to_tag, body=body, extra=extra)


def conversation_of(done: CallDone) -> dict:  # type: ignore[type-arg]
    tracker = ConversationTracker()
    finished = []
    for e in done.call.events:
        finished += tracker.handle(e)
    finished += tracker.handle(ev.ConversationEnded(key=done.call.key, at=done.call.ended_at or 0.0))
    vcon = assemble(finished[0], AssemblyOptions(), now=100.0)
    validate_vcon(vcon)
    return vcon


def test_answered_call_with_hold_and_resume() -> None:
    t = CallTracker(CallOptions(linger=2.0, invite_timeout=180.0, rtp_idle_timeout=300.0))
    out = t.handle_message(invite(), A, B, 0.0)
    assert [type(o) for o in out] == [CallStarted, MediaUpdated]
    assert t.next_deadline() == 180.0
    t.handle_message(response("180 Ringing"), B, A, 0.5)
    out = t.handle_message(response("200 OK", body=sdp("198.51.100.20", 6000)), B, A, 2.0)
    assert [type(o) for o in out] == [MediaUpdated, CallAnswered]
    assert isinstance(out[0], MediaUpdated) and out[0].endpoint.port == 6000
    assert t.next_deadline() == 302.0  # RTP idle timeout from the answer
    t.handle_message(msg("ACK sip:b SIP/2.0", cseq="1 ACK", to_tag="tt1", branch="z9hG4bK2"), A, B, 2.1)
    # A re-INVITE from the caller with sendonly holds the callee.
    hold = msg("INVITE sip:b SIP/2.0", cseq="2 INVITE", to_tag="tt1", branch="z9hG4bK3",
               body=sdp("192.0.2.10", 4000, "sendonly"))
    t.handle_message(hold, A, B, 5.0)
    t.handle_message(response("200 OK", cseq="2 INVITE", body=sdp("198.51.100.20", 6000, "recvonly")), B, A, 5.1)
    resume = msg("INVITE sip:b SIP/2.0", cseq="3 INVITE", to_tag="tt1", branch="z9hG4bK4",
                 body=sdp("192.0.2.10", 4000))
    t.handle_message(resume, A, B, 9.0)
    bye = msg("BYE sip:b SIP/2.0", cseq="4 BYE", to_tag="tt1", branch="z9hG4bK5", body="")
    assert t.handle_message(bye, A, B, 12.0) == []
    assert t.next_deadline() == 14.0
    assert t.handle_timer(13.9) == []
    done = t.handle_timer(14.0)
    assert len(done) == 1 and isinstance(done[0], CallDone) and not done[0].partial
    assert t.next_deadline() is None and not t.calls
    vcon = conversation_of(done[0])
    d = vcon["dialog"][0]
    assert d["type"] == "recording"
    assert d["duration"] == 10.0  # answer at 2.0, BYE at 12.0
    assert [(h["event"], h["party"]) for h in d["party_history"]] == [("hold", 1), ("unhold", 1)]
    assert d["sip_to_tag"] == "tt1" and d["sip_from_tag"] == "ft1" and d["sip_cseq"] == 1
    assert vcon["parties"][0]["tel"] == "+15551230001"
    assert vcon["parties"][0]["name"] == "Alice Smith"
    assert vcon["parties"][1]["tel"] == "+15559870002"


def test_retransmissions_are_recognised() -> None:
    t = CallTracker()
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(invite(), A, B, 0.5)
    t.handle_message(response("180 Ringing"), B, A, 0.6)
    t.handle_message(response("180 Ringing"), B, A, 0.7)
    assert t.counters["retransmissions"] == 2
    call = t.calls[CALL_ID]
    assert sum(1 for e in call.events if isinstance(e, ev.LegRinging)) == 1


def test_busy_is_incomplete_busy_after_linger() -> None:
    t = CallTracker(CallOptions(linger=2.0))
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("486 Busy Here"), B, A, 0.3)
    assert t.next_deadline() == 2.3
    done = t.handle_timer(2.3)
    vcon = conversation_of(done[0])  # type: ignore[arg-type]
    assert vcon["dialog"][0]["type"] == "incomplete"
    assert vcon["dialog"][0]["disposition"] == "busy"


def test_no_answer_after_ringing_and_failed_before() -> None:
    for ring, expected in ((True, "no-answer"), (False, "failed")):
        t = CallTracker()
        t.handle_message(invite(), A, B, 0.0)
        if ring:
            t.handle_message(response("180 Ringing"), B, A, 0.1)
        t.handle_message(response("480 Temporarily Unavailable"), B, A, 30.0)
        (done,) = t.handle_timer(40.0)
        assert conversation_of(done)["dialog"][0]["disposition"] == expected  # type: ignore[arg-type]


def test_congestion_and_other_failures() -> None:
    for status, expected in (("503 Service Unavailable", "congestion"), ("404 Not Found", "failed"),
                             ("600 Busy Everywhere", "busy")):
        t = CallTracker()
        t.handle_message(invite(), A, B, 0.0)
        t.handle_message(response(status), B, A, 0.1)
        (done,) = t.handle_timer(10.0)
        assert conversation_of(done)["dialog"][0]["disposition"] == expected  # type: ignore[arg-type]


def test_cancel_is_hung_up() -> None:
    t = CallTracker()
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("180 Ringing"), B, A, 0.1)
    t.handle_message(msg("CANCEL sip:b SIP/2.0", cseq="1 CANCEL"), A, B, 3.0)
    t.handle_message(response("200 OK", cseq="1 CANCEL"), B, A, 3.01)
    t.handle_message(response("487 Request Terminated"), B, A, 3.02)
    (done,) = t.handle_timer(6.0)
    vcon = conversation_of(done)  # type: ignore[arg-type]
    assert vcon["dialog"][0]["disposition"] == "hung-up"
    assert vcon["dialog"][0]["duration"] == 3.0


def test_auth_challenge_then_answer_is_one_answered_call() -> None:
    t = CallTracker(CallOptions(auth_wait=32.0))
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("407 Proxy Authentication Required", to_tag="x1"), B, A, 0.1)
    assert t.next_deadline() == 32.1
    again = msg("INVITE sip:+15559870002@example.com SIP/2.0", cseq="2 INVITE", branch="z9hG4bK9",
                body=sdp("192.0.2.10", 4000), extra=("Proxy-Authorization: Digest username=\"alice\", response=\"secret\"",))
    t.handle_message(again, A, B, 0.2)
    t.handle_message(response("200 OK", cseq="2 INVITE", body=sdp("198.51.100.20", 6000)), B, A, 1.0)
    t.handle_message(msg("BYE sip:b SIP/2.0", cseq="3 BYE", to_tag="tt1", branch="z9hG4bKb"), A, B, 5.0)
    (done,) = t.handle_timer(10.0)
    vcon = conversation_of(done)  # type: ignore[arg-type]
    assert vcon["dialog"][0]["type"] == "recording"
    assert vcon["dialog"][0]["sip_cseq"] == 2


def test_forked_call_resolves_to_the_answering_dialog() -> None:
    t = CallTracker()
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("180 Ringing", to_tag="fork1"), B, A, 0.1)
    t.handle_message(response("180 Ringing", to_tag="fork2"), B, A, 0.2)
    t.handle_message(response("200 OK", to_tag="fork2", body=sdp("198.51.100.20", 6000)), B, A, 1.0)
    t.handle_message(msg("BYE sip:b SIP/2.0", cseq="2 BYE", to_tag="fork2", branch="z9hG4bKc"), B, A, 4.0)
    (done,) = t.handle_timer(10.0)
    vcon = conversation_of(done)  # type: ignore[arg-type]
    assert vcon["dialog"][0]["sip_to_tag"] == "fork2"


def test_info_dtmf_is_keydown_keyup_on_the_sender() -> None:
    t = CallTracker()
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("200 OK", body=sdp("198.51.100.20", 6000)), B, A, 1.0)
    info = msg("INFO sip:b SIP/2.0", cseq="2 INFO", to_tag="tt1", branch="z9hG4bKd",
               body="Signal=5\r\nDuration=160\r\n", ctype="application/dtmf-relay")
    t.handle_message(info, A, B, 2.0)
    t.handle_message(msg("BYE sip:b SIP/2.0", cseq="3 BYE", to_tag="tt1", branch="z9hG4bKe"), A, B, 5.0)
    (done,) = t.handle_timer(10.0)
    history = conversation_of(done)["dialog"][0]["party_history"]  # type: ignore[arg-type]
    assert [(h["event"], h["button"], h["party"]) for h in history] == [("keydown", "5", 0), ("keyup", "5", 0)]
    assert history[1]["time"].endswith("02.160Z")


def test_pai_beats_from_and_privacy_is_honoured() -> None:
    t = CallTracker()
    pai = '"Real Name" <sip:+15550001111@carrier.example>'
    t.handle_message(invite(extra=(f"P-Asserted-Identity: {pai}",)), A, B, 0.0)
    call = t.calls[CALL_ID]
    caller = next(e for e in call.events if isinstance(e, ev.PartySeen) and e.party == "caller")
    assert caller.info.tel == "+15550001111" and caller.info.name == "Real Name"

    t2 = CallTracker()
    t2.handle_message(invite(extra=(f"P-Asserted-Identity: {pai}", "Privacy: id")), A, B, 0.0)
    call2 = t2.calls[CALL_ID]
    caller2 = next(e for e in call2.events if isinstance(e, ev.PartySeen) and e.party == "caller")
    assert caller2.info.name == "anonymous" and caller2.info.tel is None and caller2.info.sip is None


def test_identity_header_becomes_stir() -> None:
    passport = "eyJhbGciOiJFUzI1NiJ9.eyJvcmlnIjp7fX0.c2ln"
    t = CallTracker()
    t.handle_message(invite(extra=(f"Identity: {passport};info=<https://cert.example/c.pem>;alg=ES256;ppt=shaken",)),
                     A, B, 0.0)
    caller = next(e for e in t.calls[CALL_ID].events if isinstance(e, ev.PartySeen) and e.party == "caller")
    assert caller.info.stir == passport


def test_unanswered_call_times_out_as_partial() -> None:
    t = CallTracker(CallOptions(invite_timeout=180.0))
    t.handle_message(invite(), A, B, 0.0)
    assert t.handle_timer(179.0) == []
    (done,) = t.handle_timer(180.0)
    assert isinstance(done, CallDone) and done.partial and done.reason == "signalling-timeout"


def test_answered_call_without_bye_ends_on_rtp_idle() -> None:
    t = CallTracker(CallOptions(rtp_idle_timeout=300.0))
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("200 OK", body=sdp("198.51.100.20", 6000)), B, A, 1.0)
    call = t.calls[CALL_ID]
    t.touch_media(call, 200.0)
    assert t.next_deadline() == 500.0
    (done,) = t.handle_timer(500.0)
    assert isinstance(done, CallDone) and done.partial and done.reason == "rtp-timeout"


def test_credentials_never_reach_the_trace() -> None:
    t = CallTracker()
    t.handle_message(invite(extra=('Authorization: Digest username="alice", response="s3cr3t"',)), A, B, 0.0)
    trace = t.calls[CALL_ID].trace
    assert trace and all("s3cr3t" not in str(item) for item in trace)
    assert all(name.lower() != "authorization" for name, _ in trace[0]["headers"])


def test_blind_refer_is_a_transfer() -> None:
    t = CallTracker()
    t.handle_message(invite(), A, B, 0.0)
    t.handle_message(response("200 OK", body=sdp("198.51.100.20", 6000)), B, A, 1.0)
    refer = msg("REFER sip:a SIP/2.0", cseq="1 REFER", from_tag="tt1", to_tag="ft1", branch="z9hG4bKf",
                from_uri="<sip:+15559870002@example.com>", to_uri='"Alice Smith" <sip:+15551230001@example.com>',
                extra=("Refer-To: <sip:+15554443333@example.com>",))
    t.handle_message(refer, B, A, 3.0)
    t.handle_message(msg("BYE sip:b SIP/2.0", cseq="2 BYE", to_tag="tt1", branch="z9hG4bKg"), A, B, 4.0)
    (done,) = t.handle_timer(10.0)
    vcon = conversation_of(done)  # type: ignore[arg-type]
    transfer = [d for d in vcon["dialog"] if d["type"] == "transfer"]
    assert len(transfer) == 1
    tr = transfer[0]
    assert tr["transferor"] == 1 and tr["transferee"] == 0 and tr["original"] == 0
    assert vcon["parties"][tr["transfer_target"]]["tel"] == "+15554443333"
