"""Regenerate the bundled sample capture pcaps/sipp-calls.pcap with sipp and tcpdump (root).

Three calls on loopback: one answered with two-way G.711 A-law audio and an RFC 2833 digit,
one refused busy (486), one cancelled while ringing.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.sipp_harness import SippRun, capture_calls


def main() -> None:
    out = ROOT / "pcaps" / "sipp-calls.pcap"
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            SippRun("uac_pcap", "uas_audio.xml"),
            SippRun("uac_busy.xml", "uas_busy.xml"),
            SippRun("uac_cancel.xml", "uas_cancel.xml"),
        ]
        capture_calls(runs, out, Path(tmp))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
