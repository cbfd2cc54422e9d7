"""Tests on the third-party captures in ../shared/corpus/pcap/: what the vCons from each must hold.

Helpers: :func:`vcons_of` ingests a capture once per test session (cached) and validates every vCon;
:func:`tshark_streams` reads tshark's own RTP statistics of the same file from
``pcap_tshark_stats.txt``, the independent reference the packet counts are checked against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from capture.ingest import FileSummary, IngestOptions, ingest_file
from conversation.vcon import b64url_decode
from tests.conftest import CORPUS, CORPUS_PCAP
from tests.vcon_checks import validate_vcon, wav_channels

STATS = CORPUS / "pcap_tshark_stats.txt"


def require_corpus() -> None:
    if not CORPUS_PCAP.is_dir():
        pytest.skip("../shared/corpus is not beside the checkout")


@lru_cache(maxsize=64)
def _ingest(name: str) -> tuple[tuple[dict[str, Any], ...], FileSummary]:
    out: list[dict[str, Any]] = []
    summary = ingest_file(CORPUS_PCAP / name, out.append, IngestOptions(workers=0, progress=False))
    for v in out:
        validate_vcon(v)
    return tuple(out), summary


def vcons_of(name: str) -> list[dict[str, Any]]:
    """Every vCon from one corpus capture (schema-valid), in the order they were finished."""
    require_corpus()
    return list(_ingest(name)[0])


def summary_of(name: str) -> FileSummary:
    require_corpus()
    return _ingest(name)[1]


def by_call_id(vcons: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["sip_call_id"]: v for v in vcons for d in v["dialog"] if "sip_call_id" in d}


def quality(v: dict[str, Any]) -> list[dict[str, Any]]:
    """The RTP quality report bodies of a vCon (one per recorded leg)."""
    return [a["body"] for a in v["analysis"] if a.get("schema") == "vcon-capture-rtp-quality"]


def streams(v: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for body in quality(v) for s in body["streams"]]


def notes(v: dict[str, Any]) -> dict[str, Any]:
    found = [a["body"] for a in v["analysis"] if a.get("schema") == "vcon-capture-notes"]
    return found[0] if found else {}


def history(d: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    return [(h["event"], h["party"], h.get("button")) for h in d.get("party_history", [])]


def audio(d: dict[str, Any]) -> tuple[int, Any, Any]:
    """(rate, channel 0, channel 1) of a recording dialog's inline WAV."""
    return wav_channels(b64url_decode(d["body"]))


@dataclass(frozen=True)
class TsharkStream:
    src: str
    sport: int
    dst: str
    dport: int
    ssrc: int
    payload: str
    packets: int
    lost: int


_ROW = re.compile(
    r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+0x([0-9A-Fa-f]+)\s+(.+?)\s+(\d+)\s+(-?\d+) \("
)


@lru_cache(maxsize=64)
def tshark_streams(name: str) -> tuple[TsharkStream, ...]:
    """tshark's ``-z rtp,streams`` rows for one capture (RTP heuristic on)."""
    require_corpus()
    text = STATS.read_text()
    start = text.index(f"################ {name} ")
    end = text.find("################ ", start + 10)
    block = text[start : end if end > 0 else len(text)]
    out = []
    for line in block.splitlines():
        m = _ROW.match(line)
        if m:
            out.append(TsharkStream(m[1], int(m[2]), m[3], int(m[4]), int(m[5], 16), m[6].strip(), int(m[7]),
                                    int(m[8])))
    return tuple(out)


def dominant_hz(samples: Any, rate: int) -> float:
    import numpy as np

    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(samples))


def path_of(name: str) -> Path:
    return CORPUS_PCAP / name
