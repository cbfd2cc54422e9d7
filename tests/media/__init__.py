"""Tests of RTP records, codecs and the recorder; fixtures in data/ (see data/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

DATA = Path(__file__).parent / "data"


class Datagram(NamedTuple):
    """One UDP payload cut from a corpus capture."""

    arrival: float
    sport: int
    dport: int
    payload: bytes


def load_datagrams(name: str) -> list[Datagram]:
    """Read a `data/*.tsv` fixture (arrival, src port, dst port, hex payload per line)."""
    datagrams = []
    for line in (DATA / name).read_text().splitlines():
        arrival, sport, dport, payload = line.split("\t")
        datagrams.append(Datagram(float(arrival), int(sport), int(dport), bytes.fromhex(payload)))
    return datagrams
