"""RTP-only captures: with no SIP there is no call to build, so no vCon (the packets are counted)."""

from __future__ import annotations

import pytest

from tests.corpus import summary_of, tshark_streams, vcons_of


@pytest.mark.parametrize(
    ("name", "packets"),
    [
        ("sipp_g711a.pcap", 236),
        ("sipp_dtmf_2833_1.pcap", 10),
        ("asterisk-testsuite_opus_16_bit_48khz_60_fec_rtp.pcapng", 3000),
    ],
)
def test_rtp_without_sip_yields_no_call(name: str, packets: int) -> None:
    assert vcons_of(name) == []
    summary = summary_of(name)
    assert summary.calls == 0 and summary.packets == packets
    # Not errors: datagrams that belong to no call are counted apart from malformed packets.
    assert summary.skipped == 0
    assert summary.skipped_by_reason["unmatched-datagrams"] == packets
    assert sum(t.packets for t in tshark_streams(name)) == packets
