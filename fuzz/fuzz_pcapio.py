"""Fuzz the capture-file reader (pcap, pcapng, gzip).

Invariant: only ``CaptureError`` escapes opening or iterating; a classic pcap re-written with
``PcapWriter`` reads back to the same records.
"""

from __future__ import annotations

import gzip
import io

import _common
import atheris

with atheris.instrument_imports():
    from capture.pcapio import CaptureError, CaptureReader, PcapWriter


def _read(data: bytes) -> tuple[str, int | None, list[tuple[float, int, bytes]]]:
    reader = CaptureReader(io.BufferedReader(io.BytesIO(data)), "fuzz")
    with reader:
        records = [(ts, lt, bytes(frame)) for ts, lt, frame in reader]
        assert reader.records == len(records)
        return reader.format, reader.linktype, records


def TestOneInput(data: bytes) -> None:
    try:
        fmt, linktype, records = _read(data)
    except CaptureError:
        return
    if fmt != "pcap" or not records or linktype is None:
        return
    out = io.BytesIO()
    writer = PcapWriter(out, linktype=linktype, nanosecond=True)
    for ts, _, frame in records:
        if ts < 0 or ts >= 1 << 32:
            return
        writer.write(ts, frame)
    _, _, again = _read(out.getvalue())
    assert [(lt, f) for _, lt, f in again] == [(lt, f) for _, lt, f in records]
    assert all(abs(a[0] - b[0]) < 1e-6 for a, b in zip(again, records, strict=True))


def _seeds() -> list[bytes]:
    out = []
    for path in _common.capture_files():
        head = path.read_bytes()[:6000]
        out.append(head)
        out.append(gzip.compress(head[:1500], mtime=0))
    return out


if __name__ == "__main__":
    _common.run("pcapio", TestOneInput, _seeds, max_len=8192)
