"""Run inside a fresh network namespace (``unshare --net``): capture on both ends of a veth pair.

Frames are sent with a packet socket on ``veth0``, so the sender sees them as outgoing and
``veth1`` as incoming; one of them carries an 802.1Q tag, which the receiving kernel strips into
``skb->vlan_tci`` (``TP_STATUS_VLAN_VALID``) and `LiveSource` must put back. Prints JSON:
``{"tx": [[frame hex, linktype], ...], "rx": [...], "sent": [...]}``.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

from capture.live import LiveSource


def _frame(payload: bytes, vlan: int | None = None) -> bytes:
    udp = struct.pack("!HHHH", 40000, 5555, 8 + len(payload), 0) + payload
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      bytes([10, 8, 0, 1]), bytes([10, 8, 0, 2]))
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return bytes.fromhex("020000000002 020000000001") + tag + b"\x08\x00" + iph + udp


def main() -> None:
    subprocess.run(["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"], check=True)
    for dev in ("veth0", "veth1"):
        subprocess.run(["ip", "link", "set", dev, "up"], check=True)
    sent = [_frame(b"one"), _frame(b"tagged", vlan=100), _frame(b"two")]
    out: dict[str, list[tuple[str, int]]] = {"sent": [(f.hex(), 1) for f in sent]}
    with LiveSource("veth0", bpf="udp or (vlan and udp)", ring_mb=1, block_kb=64) as tx, \
            LiveSource("veth1", bpf="udp", ring_mb=1, block_kb=64) as rx:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind(("veth0", 0))
            for f in sent:
                s.send(f)
        time.sleep(0.3)
        for name, src in (("tx", tx), ("rx", rx)):
            out[name] = [(f.hex(), lt) for _ts, lt, f in src.read_batch(1.0)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
