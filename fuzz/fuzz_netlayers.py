"""Fuzz the link/IP/UDP/TCP/tunnel decoder with a few frames per input (so fragments meet).

Invariant: ``PacketDecoder.decode`` never raises (bad frames are counted in ``skipped``), fragment
state stays under ``max_pending``, and a datagram's fields are in range.
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from capture.netlayers import (
        LINKTYPE_ETHERNET,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_LOOP,
        LINKTYPE_NULL,
        LINKTYPE_RAW,
        PacketDecoder,
    )

LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL,
             LINKTYPE_LOOP, LINKTYPE_IPV4, LINKTYPE_IPV6, 0xFFFF)


def split_frames(data: bytes) -> list[tuple[int, float, bytes]]:
    """Input framing: records of [linktype index][seconds later][length, 2 bytes big-endian][frame]."""
    out: list[tuple[int, float, bytes]] = []
    pos, ts = 0, 0.0
    while pos + 4 <= len(data) and len(out) < 8:
        index, dt, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        ts += dt % 16
        out.append((LINKTYPES[index % len(LINKTYPES)], ts, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def TestOneInput(data: bytes) -> None:
    decoder = PacketDecoder(max_pending=8, fragment_timeout=5.0)
    ts = 0.0
    for linktype, ts, frame in split_frames(data):
        dg = decoder.decode(ts, linktype, frame)
        assert decoder.pending_fragments <= 8
        if dg is not None:
            assert 0 <= dg.sport <= 0xFFFF and 0 <= dg.dport <= 0xFFFF
            assert 0 <= dg.tcp_seq <= 0xFFFFFFFF
            assert len(dg.payload) <= 65535
    decoder.expire(ts + 100)
    assert decoder.pending_fragments == 0


def _seeds() -> list[bytes]:
    out = []
    frames = list(_common.frames())
    for i, (linktype, frame) in enumerate(frames):
        index = LINKTYPES.index(linktype) if linktype in LINKTYPES else 0
        one = bytes([index, 0]) + len(frame).to_bytes(2, "big") + frame
        out.append(one)
        if i % 5 == 0 and i + 1 < len(frames):  # two frames in a row
            lt2, f2 = frames[i + 1]
            out.append(one + bytes([LINKTYPES.index(lt2) if lt2 in LINKTYPES else 0, 1])
                       + len(f2).to_bytes(2, "big") + f2)
    return out


if __name__ == "__main__":
    _common.run("netlayers", TestOneInput, _seeds, max_len=4096)
