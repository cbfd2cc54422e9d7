"""Legs of one conversation across Call-IDs: B2BUA correlation headers, blind and attended transfers.

The engine is fed hand-made SIP datagrams from now = 0.0 (no RTP), so every index is checked exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capture.complete import complete_call
from capture.engine import CaptureEngine, EngineOptions, FinishedCall
from conversation.assembler import AssemblyOptions
from tests.vcon_checks import validate_vcon

A = ("192.0.2.1", 5060)  # Alice
B = ("192.0.2.2", 5060)  # Bob
C = ("192.0.2.3", 5060)  # Carol
PBX = ("192.0.2.100", 5060)


def sip(start: str, call_id: str, cseq: str, *, from_uri: str, to_uri: str, from_tag: str,
        to_tag: str | None = None, extra: tuple[str, ...] = (), branch: str = "z9hG4bK1") -> bytes:
    to = to_uri + (f";tag={to_tag}" if to_tag else "")
    lines = [start, f"Via: SIP/2.0/UDP 192.0.2.9:5060;branch={branch}", f"From: {from_uri};tag={from_tag}",
             f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq}", *extra, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Leg:
    """One dialog, driven step by step."""

    def __init__(self, engine: CaptureEngine, call_id: str, caller: tuple[str, int], callee: tuple[str, int],
                 caller_uri: str, callee_uri: str) -> None:
        self.e, self.call_id, self.caller, self.callee = engine, call_id, caller, callee
        self.caller_uri, self.callee_uri = caller_uri, callee_uri
        self.ftag, self.ttag = f"f-{call_id}", f"t-{call_id}"
        self.cseq = 1

    def invite(self, now: float, *extra: str) -> None:
        ruri = self.callee_uri.partition("<")[2].partition(">")[0]
        self.e.handle_sip_bytes(sip(f"INVITE {ruri} SIP/2.0", self.call_id, "1 INVITE", from_uri=self.caller_uri,
                                    to_uri=self.callee_uri, from_tag=self.ftag, extra=extra), self.caller,
                                self.callee, now)

    def answer(self, now: float) -> None:
        self.e.handle_sip_bytes(sip("SIP/2.0 200 OK", self.call_id, "1 INVITE", from_uri=self.caller_uri,
                                    to_uri=self.callee_uri, from_tag=self.ftag, to_tag=self.ttag), self.callee,
                                self.caller, now)

    def request(self, method: str, now: float, *extra: str, by_callee: bool = False) -> None:
        self.cseq += 1
        if by_callee:
            data = sip(f"{method} sip:x SIP/2.0", self.call_id, f"{self.cseq} {method}", from_uri=self.callee_uri,
                       to_uri=self.caller_uri, from_tag=self.ttag, to_tag=self.ftag, extra=extra,
                       branch=f"z9hG4bK{method}{self.cseq}")
            self.e.handle_sip_bytes(data, self.callee, self.caller, now)
        else:
            data = sip(f"{method} sip:x SIP/2.0", self.call_id, f"{self.cseq} {method}", from_uri=self.caller_uri,
                       to_uri=self.callee_uri, from_tag=self.ftag, to_tag=self.ttag, extra=extra,
                       branch=f"z9hG4bK{method}{self.cseq}")
            self.e.handle_sip_bytes(data, self.caller, self.callee, now)

    def respond(self, status: str, method: str, now: float, *, by_callee: bool = False) -> None:
        if by_callee:  # the request came from the callee: the caller answers it
            data = sip(f"SIP/2.0 {status}", self.call_id, f"{self.cseq} {method}", from_uri=self.callee_uri,
                       to_uri=self.caller_uri, from_tag=self.ttag, to_tag=self.ftag,
                       branch=f"z9hG4bK{method}{self.cseq}")
            self.e.handle_sip_bytes(data, self.caller, self.callee, now)
        else:
            data = sip(f"SIP/2.0 {status}", self.call_id, f"{self.cseq} {method}", from_uri=self.caller_uri,
                       to_uri=self.callee_uri, from_tag=self.ftag, to_tag=self.ttag,
                       branch=f"z9hG4bK{method}{self.cseq}")
            self.e.handle_sip_bytes(data, self.callee, self.caller, now)


ALICE = '"Alice" <sip:alice@example.com>'
BOB = '"Bob" <sip:bob@example.com>'
CAROL = '"Carol" <sip:carol@example.com>'


def engine(tmp_path: Path, **kw: Any) -> CaptureEngine:
    return CaptureEngine(tmp_path, EngineOptions(**kw))


def vcon_of(job: FinishedCall) -> dict[str, Any]:
    v = complete_call(job, AssemblyOptions(), 1000.0)
    validate_vcon(v)
    return v


def finish(e: CaptureEngine, now: float) -> list[FinishedCall]:
    e.advance(now)
    return e.drain()


def test_b2bua_legs_linked_by_x_cid_are_one_vcon_with_two_dialogs(tmp_path: Path) -> None:
    e = engine(tmp_path)
    a = Leg(e, "leg-a", A, PBX, ALICE, BOB)
    b = Leg(e, "leg-b", PBX, B, ALICE, BOB)
    a.invite(0.0)
    b.invite(0.1, "X-CID: leg-a")
    b.answer(2.0)
    a.answer(2.05)
    a.request("BYE", 10.0)
    a.respond("200 OK", "BYE", 10.01)
    assert finish(e, 12.5) == []  # leg b is still up: the conversation is held
    b.request("BYE", 10.1)
    b.respond("200 OK", "BYE", 10.11)
    (job,) = finish(e, 13.0)
    v = vcon_of(job)
    assert [d["type"] for d in v["dialog"]] == ["recording", "recording"]
    assert [d["sip_call_id"] for d in v["dialog"]] == ["leg-a", "leg-b"]
    assert all(d["parties"] == [0, 1] for d in v["dialog"])
    assert len(v["parties"]) == 2 and v["parties"][0]["name"] == "Alice" and v["parties"][1]["name"] == "Bob"
    notes = next(a["body"] for a in v["analysis"] if a.get("schema") == "vcon-capture-notes")
    assert notes["linked_legs"]["links"] == [{"kind": "correlation", "header": "X-CID", "value": "leg-a"}]
    traces = [a for a in v["attachments"] if a["purpose"] == "sip-message-trace"]
    assert [t["dialog"] for t in traces] == [0, 1]


def test_b2bua_legs_linked_by_session_id_and_charging_vector(tmp_path: Path) -> None:
    for header_a, header_b in (
        ("Session-ID: ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000",
         "Session-ID: AB30317F1A784DC48FF824D0D3715D86;remote=00000000000000000000000000000000"),
        ('P-Charging-Vector: icid-value="1234bc9876e";icid-generated-at=192.0.6.8',
         "P-Charging-Vector: icid-value=1234bc9876e;orig-ioi=home1.net"),
    ):
        e = engine(tmp_path)
        a = Leg(e, "sa", A, PBX, ALICE, BOB)
        b = Leg(e, "sb", PBX, B, ALICE, BOB)
        a.invite(0.0, header_a)
        b.invite(0.1, header_b)
        for leg in (a, b):
            leg.answer(1.0)
            leg.request("BYE", 5.0)
        (job,) = finish(e, 10.0)
        v = vcon_of(job)
        assert [d["sip_call_id"] for d in v["dialog"]] == ["sa", "sb"]


def test_unrelated_calls_and_disabled_correlation_stay_apart(tmp_path: Path) -> None:
    e = engine(tmp_path, correlation_headers=())
    a = Leg(e, "u1", A, PBX, ALICE, BOB)
    b = Leg(e, "u2", PBX, B, ALICE, BOB)
    a.invite(0.0)
    b.invite(0.1, "X-CID: u1")
    for leg in (a, b):
        leg.answer(1.0)
        leg.request("BYE", 5.0)
    assert len(finish(e, 10.0)) == 2


def test_blind_transfer_links_the_new_leg(tmp_path: Path) -> None:
    e = engine(tmp_path)
    original = Leg(e, "call-1", A, B, ALICE, BOB)
    original.invite(0.0)
    original.answer(1.0)
    original.request("REFER", 5.0, "Refer-To: <sip:carol@example.com>", "Referred-By: <sip:bob@example.com>",
                     by_callee=True)
    original.respond("202 Accepted", "REFER", 5.01, by_callee=True)
    target = Leg(e, "call-2", A, C, ALICE, CAROL)
    target.invite(5.5, "Referred-By: <sip:bob@example.com>")
    original.request("BYE", 6.0, by_callee=True)
    target.answer(7.0)
    assert finish(e, 9.0) == []  # the original leg is over, the target leg is not
    target.request("BYE", 20.0)
    (job,) = finish(e, 23.0)
    v = vcon_of(job)
    types = [d["type"] for d in v["dialog"]]
    assert types == ["recording", "recording", "transfer"]
    assert [p.get("name") for p in v["parties"]] == ["Alice", "Bob", "Carol"]
    assert v["dialog"][0]["parties"] == [0, 1] and v["dialog"][1]["parties"] == [0, 2]
    tr = v["dialog"][2]
    assert (tr["transferee"], tr["transferor"], tr["transfer_target"]) == (0, 1, 2)
    assert tr["original"] == 0 and tr["target_dialog"] == 1 and "consultation" not in tr
    assert "parties" not in tr and "body" not in tr


def test_attended_transfer_original_consultation_target(tmp_path: Path) -> None:
    e = engine(tmp_path)
    original = Leg(e, "orig", A, B, ALICE, BOB)  # Alice calls Bob
    original.invite(0.0)
    original.answer(1.0)
    consult = Leg(e, "consult", B, C, BOB, CAROL)  # Bob (Alice on hold) calls Carol
    consult.invite(3.0)
    consult.answer(4.0)
    refer_to = "Refer-To: <sip:carol@example.com?Replaces=consult%3Bto-tag%3Dt-consult%3Bfrom-tag%3Df-consult>"
    original.request("REFER", 8.0, refer_to, by_callee=True)  # Bob refers Alice to Carol
    original.respond("202 Accepted", "REFER", 8.01, by_callee=True)
    target = Leg(e, "target", A, C, ALICE, CAROL)  # Alice calls Carol, replacing Bob's call
    target.invite(8.5, "Replaces: consult;to-tag=t-consult;from-tag=f-consult", "Referred-By: <sip:bob@example.com>")
    target.answer(8.6)
    consult.request("BYE", 8.7, by_callee=True)
    original.request("BYE", 8.8, by_callee=True)
    target.request("BYE", 30.0)
    (job,) = finish(e, 33.0)
    v = vcon_of(job)
    assert [d.get("sip_call_id", d["type"]) for d in v["dialog"]] == ["orig", "consult", "target", "transfer"]
    assert [p.get("name") for p in v["parties"]] == ["Alice", "Bob", "Carol"]
    assert [d["parties"] for d in v["dialog"][:3]] == [[0, 1], [1, 2], [0, 2]]
    tr = v["dialog"][3]
    assert (tr["transferee"], tr["transferor"], tr["transfer_target"]) == (0, 1, 2)
    assert (tr["original"], tr["consultation"], tr["target_dialog"]) == (0, 1, 2)


def test_refer_without_a_target_leg_is_held_then_emitted_alone(tmp_path: Path) -> None:
    e = engine(tmp_path, transfer_wait=10.0)
    original = Leg(e, "lonely", A, B, ALICE, BOB)
    original.invite(0.0)
    original.answer(1.0)
    original.request("REFER", 2.0, "Refer-To: <sip:carol@example.com>", by_callee=True)
    original.respond("202 Accepted", "REFER", 2.01, by_callee=True)
    original.request("BYE", 3.0, by_callee=True)
    assert finish(e, 6.0) == []  # linger is over, but the target leg may still come
    assert e.next_deadline() == 12.0
    (job,) = finish(e, 12.0)
    v = vcon_of(job)
    tr = v["dialog"][-1]
    assert tr["type"] == "transfer" and tr["original"] == 0 and "target_dialog" not in tr
    assert v["parties"][tr["transfer_target"]]["sip"] == "sip:carol@example.com"


def test_refused_refer_is_no_transfer(tmp_path: Path) -> None:
    e = engine(tmp_path)
    original = Leg(e, "refused", A, B, ALICE, BOB)
    original.invite(0.0)
    original.answer(1.0)
    original.request("REFER", 2.0, "Refer-To: <sip:carol@example.com>", by_callee=True)
    original.respond("603 Declined", "REFER", 2.01, by_callee=True)
    original.request("BYE", 3.0, by_callee=True)
    (job,) = finish(e, 6.0)
    v = vcon_of(job)
    assert [d["type"] for d in v["dialog"]] == ["recording"]
