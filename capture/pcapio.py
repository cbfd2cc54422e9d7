"""Streaming capture file reader (pcap, pcapng, either gzipped) and a small pcap writer.

`open_capture(path)` sniffs the format from the first bytes and returns a `CaptureReader`; iterating it
yields ``(ts, linktype, frame)`` tuples: seconds since the epoch as a float, the LINKTYPE_* value of the
record's interface and the captured bytes (``caplen`` of them, not the original length).

The file is never read whole: it is read in 1 MiB chunks and records are parsed with ``unpack_from`` at
offsets into the chunk; a record that straddles two chunks is completed by carrying the tail over.

Errors, one class (`CaptureError`) with a `CaptureErrorReason` and a byte offset:

* not a capture at all (unknown magic)                 -> NOT_A_CAPTURE, offset 0
* a file header or section header cut short            -> TRUNCATED_HEADER
* pcap major version other than 2, pcapng other than 1 -> UNSUPPORTED_VERSION
* a record header that cannot be right (pcap caplen > 256 KiB, pcapng block length not a multiple of 4,
  below 12, above 16 MiB or not matching the trailing copy, packet data overrunning its block, a packet
  naming an interface that was never described)        -> CORRUPT_RECORD at the record's offset
* a gzip stream that cannot be inflated                -> BAD_COMPRESSION

Corrupt records in the middle raise rather than resynchronise: neither format has a sync marker, so a
guess could turn garbage into plausible packets. A file that simply ends inside its last record (a capture
that was still being written, or was cut by a size limit) is not an error: iteration stops cleanly, the
reader's `truncated_at` holds the offset of the cut record and a line is added to `warnings`.

For gzip input, offsets count decompressed bytes and `size` is None. The pcap header's `thiszone` is
ignored (always 0 in practice); a pcapng Simple Packet Block, which has no timestamp, repeats the previous
packet's time.
"""

from __future__ import annotations

import enum
import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import BinaryIO, Final, Self

__all__ = [
    "CaptureError",
    "CaptureErrorReason",
    "CaptureReader",
    "PcapWriter",
    "Record",
    "open_capture",
]

Record = tuple[float, int, bytes]
"""One captured frame: (seconds since the epoch, LINKTYPE_* value, captured bytes)."""

CHUNK_SIZE: Final = 1 << 20
MAX_CAPLEN: Final = 256 * 1024
"""Largest pcap record we believe; anything above means the record header is garbage."""
MAX_BLOCK: Final = 16 << 20
"""Largest pcapng block we buffer."""

_PCAP_MAGICS: Final[dict[bytes, tuple[str, float]]] = {
    # magic bytes as they appear in the file -> (struct byte order, fraction scale)
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_GZIP_MAGIC: Final = b"\x1f\x8b"
_SHB: Final = 0x0A0D0D0A
_BOM_LE: Final = b"\x4d\x3c\x2b\x1a"
_BOM_BE: Final = b"\x1a\x2b\x3c\x4d"
_IDB: Final = 1
_OPB: Final = 2
_SPB: Final = 3
_EPB: Final = 6
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14


class CaptureErrorReason(enum.Enum):
    """Why a capture file could not be read."""

    NOT_A_CAPTURE = "not-a-capture"
    TRUNCATED_HEADER = "truncated-header"
    CORRUPT_RECORD = "corrupt-record"
    UNSUPPORTED_VERSION = "unsupported-version"
    BAD_COMPRESSION = "bad-compression"


class CaptureError(Exception):
    """A capture file is unreadable at `offset` (decompressed bytes for gzip) for `reason`."""

    def __init__(self, reason: CaptureErrorReason, offset: int, message: str, path: str | None = None):
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message} (at byte offset {offset})")
        self.reason = reason
        self.offset = offset
        self.path = path


class _Interface:
    """What a pcapng Interface Description Block says about timestamps and link type."""

    __slots__ = ("divisor", "linktype", "offset", "snaplen")

    def __init__(self, linktype: int, snaplen: int, divisor: float, offset: int):
        self.linktype = linktype
        self.snaplen = snaplen
        self.divisor = divisor
        self.offset = offset


class CaptureReader:
    """Iterable over the records of one capture file; use `open_capture` to make one.

    Attributes (the counters advance a chunk at a time while iterating and are exact once it ends):
    `path`, `size` (bytes on disk, None for gzip), `format` ("pcap" or "pcapng"), `bytes_read`,
    `records`, `truncated_at` (offset of a final record that the file cuts short, else None),
    `warnings` (human-readable notes, e.g. about truncation or odd options), `linktype` (pcap only;
    pcapng records carry their interface's link type).
    """

    def __init__(self, raw: io.BufferedReader, path: str, *, name: str | None = None):
        self.path = path
        self.name = name if name is not None else path
        self.size: int | None = None
        self.bytes_read = 0
        self.records = 0
        self.truncated_at: int | None = None
        self.warnings: list[str] = []
        self.format = ""
        self.linktype: int | None = None
        self._raw = raw
        self._src: io.BufferedIOBase = raw
        self._gzip = False
        self._eof = False
        self._cut = False  # the gzip stream ended before its end-of-stream marker
        self._base = 0  # stream offset of self._buf[0]
        self._buf = b""
        self._iter: Generator[Record, None, None] | None = None
        self.fast: Callable[[bytes, int], tuple[int, int]] | None = None
        """pcap only: ``fast(buf, pos) -> (pos, records)`` may consume records before each one the
        reader would hand out (the engine's compiled fast path); consumed records are counted in
        ``records`` but not yielded."""
        self._order = "<"
        self._scale = 1e-6
        self._sniff()

    @property
    def big_endian(self) -> bool:
        """pcap only: the file's byte order."""
        return self._order == ">"

    @property
    def time_scale(self) -> float:
        """pcap only: seconds per unit of a record's fractional timestamp (1e-6 or 1e-9)."""
        return self._scale

    # -- context manager / iteration -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop iterating (the counters become exact) and close the file; idempotent."""
        if self._iter is not None:
            self._iter.close()
        if self._src is not self._raw:
            self._src.close()
        self._raw.close()

    def __iter__(self) -> Iterator[Record]:
        if self._iter is None:
            self._iter = self._iter_pcap() if self.format == "pcap" else self._iter_pcapng()
        return self._iter

    def iter_batches(self, size: int = 4096) -> Iterator[list[Record]]:
        """Yield the records in lists of up to `size` (a convenience: plain iteration is as fast)."""
        it = iter(self)
        batch: list[Record] = []
        append = batch.append
        for rec in it:
            append(rec)
            if len(batch) >= size:
                yield batch
                batch = []
                append = batch.append
        if batch:
            yield batch

    def __repr__(self) -> str:
        return f"<CaptureReader {self.name!r} {self.format} records={self.records}>"

    # -- reading ---------------------------------------------------------------------------------

    def _error(self, reason: CaptureErrorReason, offset: int, message: str) -> CaptureError:
        return CaptureError(reason, offset, message, self.name)

    def _read(self) -> bytes:
        """Read up to one chunk; b"" at the end (a gzip stream cut short counts as an end)."""
        if self._eof:
            return b""
        try:
            data = self._src.read1(CHUNK_SIZE)
        except EOFError:
            self._cut = True
            self.warnings.append(f"gzip stream ends early after {self.bytes_read} decompressed bytes")
            data = b""
        except (OSError, zlib.error) as exc:
            raise self._error(
                CaptureErrorReason.BAD_COMPRESSION, self.bytes_read, f"cannot decompress: {exc}"
            ) from exc
        if not data:
            self._eof = True
        self.bytes_read += len(data)
        return data

    def _fill(self, buf: bytes, pos: int) -> tuple[bytes, bool]:
        """Drop `buf[:pos]`, append one more read; return the new buffer and whether it grew."""
        self._base += pos
        more = self._read()
        if not more:
            return buf[pos:], False
        return buf[pos:] + more, True

    def _sniff(self) -> None:
        buf = self._raw.read(CHUNK_SIZE)
        if buf[:2] == _GZIP_MAGIC:
            self._raw.seek(0)
            self._src = gzip.GzipFile(fileobj=self._raw, mode="rb")
            self._gzip = True
            buf = b""
            while len(buf) < 24:
                more = self._read()
                if not more:
                    break
                buf += more
        else:
            self.bytes_read = len(buf)
            try:
                self.size = os.fstat(self._raw.fileno()).st_size
            except (OSError, AttributeError, ValueError):
                self.size = None
            if len(buf) < CHUNK_SIZE:
                self._eof = True
        magic = buf[:4]
        if magic in _PCAP_MAGICS:
            self._open_pcap(buf, magic)
        elif magic == b"\x0a\x0d\x0d\x0a":
            self._open_pcapng(buf)
        else:
            what = "gzip data" if self._gzip else "file"
            raise self._error(
                CaptureErrorReason.NOT_A_CAPTURE,
                0,
                f"{what} is not a pcap or pcapng capture (magic {magic.hex()})",
            )

    def _open_pcapng(self, buf: bytes) -> None:
        while len(buf) < 28:
            more = self._read()
            if not more:
                raise self._error(
                    CaptureErrorReason.TRUNCATED_HEADER, 0, "pcapng section header is cut short"
                )
            buf += more
        bom = buf[8:12]
        if bom not in (_BOM_LE, _BOM_BE):
            raise self._error(
                CaptureErrorReason.NOT_A_CAPTURE, 8, f"pcapng byte-order magic {bom.hex()} is not valid"
            )
        major, minor = struct.unpack_from("<HH" if bom == _BOM_LE else ">HH", buf, 12)
        if major != 1:
            raise self._error(CaptureErrorReason.UNSUPPORTED_VERSION, 12, f"pcapng version {major}.{minor}")
        self.format = "pcapng"
        self._buf = buf

    # -- pcap --------------------------------------------------------------------------------------

    def _open_pcap(self, buf: bytes, magic: bytes) -> None:
        order, scale = _PCAP_MAGICS[magic]
        while len(buf) < 24:
            more = self._read()
            if not more:
                raise self._error(CaptureErrorReason.TRUNCATED_HEADER, 0, "pcap file header is cut short")
            buf += more
        major, minor, _zone, _sigfigs, _snaplen, network = struct.unpack_from(order + "HHiIII", buf, 4)
        if major != 2:
            raise self._error(CaptureErrorReason.UNSUPPORTED_VERSION, 4, f"pcap version {major}.{minor}")
        self.format = "pcap"
        # The upper bits of the link-type field carry FCS information (pcap spec, "LinkType and
        # additional information"); the link type itself is the low 16 bits.
        self.linktype = network & 0xFFFF
        self._order = order
        self._scale = scale
        self._base = 24
        self._buf = buf[24:]

    def _iter_pcap(self) -> Generator[Record, None, None]:
        unpack = struct.Struct(self._order + "IIII").unpack_from
        scale = self._scale
        linktype = self.linktype if self.linktype is not None else 0
        buf = self._buf
        self._buf = b""
        pos = 0
        count = self.records
        try:
            while True:
                n = len(buf)
                while pos + 16 <= n:
                    fast = self.fast
                    if fast is not None:
                        pos, consumed = fast(buf, pos)
                        count += consumed
                        if pos + 16 > n:
                            break
                    sec, frac, caplen, _orig = unpack(buf, pos)
                    if caplen > MAX_CAPLEN:
                        raise self._error(
                            CaptureErrorReason.CORRUPT_RECORD,
                            self._base + pos,
                            f"pcap record claims {caplen} captured bytes",
                        )
                    end = pos + 16 + caplen
                    if end > n:
                        break
                    count += 1
                    yield (sec + frac * scale, linktype, buf[pos + 16 : end])
                    pos = end
                self.records = count
                buf, grew = self._fill(buf, pos)
                pos = 0
                if not grew:
                    if buf:
                        self._truncated(self._base, len(buf), "pcap record")
                    elif self._cut:
                        self.truncated_at = self._base
                    return
        finally:
            self.records = count

    def _truncated(self, offset: int, have: int, what: str) -> None:
        self.truncated_at = offset
        self.warnings.append(f"{self.name}: last {what} at byte {offset} is cut short ({have} bytes present)")

    # -- pcapng ------------------------------------------------------------------------------------

    def _iter_pcapng(self) -> Generator[Record, None, None]:
        buf = self._buf
        self._buf = b""
        pos = 0
        count = self.records
        order = "<"
        u32 = struct.Struct("<I").unpack_from
        hdr = struct.Struct("<II").unpack_from
        epb = struct.Struct("<IIIII").unpack_from
        ifaces: list[_Interface] = []
        last_ts = 0.0
        try:
            while True:
                n = len(buf)
                while pos + 12 <= n:
                    btype, blen = hdr(buf, pos)
                    if btype == _SHB:
                        bom = buf[pos + 8 : pos + 12]
                        if bom == _BOM_LE:
                            order = "<"
                        elif bom == _BOM_BE:
                            order = ">"
                        else:
                            raise self._error(
                                CaptureErrorReason.CORRUPT_RECORD,
                                pos + self._base + 8,
                                f"pcapng section header has a bad byte-order magic {bom.hex()}",
                            )
                        u32 = struct.Struct(order + "I").unpack_from
                        hdr = struct.Struct(order + "II").unpack_from
                        epb = struct.Struct(order + "IIIII").unpack_from
                        blen = u32(buf, pos + 4)[0]
                    if blen & 3 or blen < 12 or blen > MAX_BLOCK:
                        raise self._error(
                            CaptureErrorReason.CORRUPT_RECORD,
                            self._base + pos,
                            f"pcapng block of type {btype:#x} has an impossible length {blen}",
                        )
                    end = pos + blen
                    if end > n:
                        break
                    if u32(buf, end - 4)[0] != blen:
                        raise self._error(
                            CaptureErrorReason.CORRUPT_RECORD,
                            self._base + pos,
                            f"pcapng block of type {btype:#x}: trailing length does not match {blen}",
                        )
                    if btype == _EPB or btype == _OPB:
                        if blen < 32:
                            raise self._short_block(pos, btype, blen)
                        if btype == _EPB:
                            if_id, hi, lo, caplen, _orig = epb(buf, pos + 8)
                        else:
                            (word,) = u32(buf, pos + 8)
                            if_id = word >> 16 if order == ">" else word & 0xFFFF
                            _x, hi, lo, caplen, _orig = epb(buf, pos + 8)
                        if caplen > blen - 32:
                            raise self._error(
                                CaptureErrorReason.CORRUPT_RECORD,
                                self._base + pos,
                                f"pcapng packet claims {caplen} bytes in a {blen}-byte block",
                            )
                        if if_id >= len(ifaces):
                            raise self._no_interface(pos, if_id)
                        iface = ifaces[if_id]
                        last_ts = ((hi << 32) | lo) / iface.divisor + iface.offset
                        count += 1
                        yield (last_ts, iface.linktype, buf[pos + 28 : pos + 28 + caplen])
                    elif btype == _SPB:
                        if blen < 16:
                            raise self._short_block(pos, btype, blen)
                        if not ifaces:
                            raise self._no_interface(pos, 0)
                        iface = ifaces[0]
                        caplen = min(u32(buf, pos + 8)[0], blen - 16)
                        if iface.snaplen:
                            caplen = min(caplen, iface.snaplen)
                        # A simple packet block has no timestamp: repeat the previous packet's.
                        count += 1
                        yield (last_ts, iface.linktype, buf[pos + 12 : pos + 12 + caplen])
                    elif btype == _IDB:
                        if blen < 20:
                            raise self._short_block(pos, btype, blen)
                        ifaces.append(self._interface(buf, pos, blen, order))
                    elif btype == _SHB:
                        if blen < 28:
                            raise self._short_block(pos, btype, blen)
                        major, minor = struct.unpack_from(order + "HH", buf, pos + 12)
                        if major != 1:
                            raise self._error(
                                CaptureErrorReason.UNSUPPORTED_VERSION,
                                self._base + pos + 12,
                                f"pcapng version {major}.{minor}",
                            )
                        ifaces = []
                    pos = end
                self.records = count
                buf, grew = self._fill(buf, pos)
                pos = 0
                if not grew:
                    if buf:
                        self._truncated(self._base, len(buf), "pcapng block")
                    elif self._cut:
                        self.truncated_at = self._base
                    return
        finally:
            self.records = count

    def _short_block(self, pos: int, btype: int, blen: int) -> CaptureError:
        return self._error(
            CaptureErrorReason.CORRUPT_RECORD,
            self._base + pos,
            f"pcapng block of type {btype:#x} is too short ({blen} bytes)",
        )

    def _no_interface(self, pos: int, if_id: int) -> CaptureError:
        return self._error(
            CaptureErrorReason.CORRUPT_RECORD,
            self._base + pos,
            f"pcapng packet names interface {if_id}, which has no description block",
        )

    def _interface(self, buf: bytes, pos: int, blen: int, order: str) -> _Interface:
        linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
        divisor = 1e6
        tsoffset = 0
        opt = pos + 16
        end = pos + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(order + "HH", buf, opt)
            if code == 0:
                break
            value = opt + 4
            if value + olen > end:
                self.warnings.append(
                    f"{self.name}: interface description at byte {self._base + pos} has a bad option; ignored"
                )
                break
            if code == _OPT_IF_TSRESOL and olen >= 1:
                res = buf[value]
                # pcapng 4.2: MSB clear -> 10^-n seconds, set -> 2^-n seconds.
                divisor = float(2 ** (res & 0x7F)) if res & 0x80 else float(10**res)
            elif code == _OPT_IF_TSOFFSET and olen >= 8:
                (tsoffset,) = struct.unpack_from(order + "q", buf, value)
            opt = value + ((olen + 3) & ~3)
        return _Interface(linktype, snaplen, divisor, tsoffset)


def open_capture(path: str | os.PathLike[str], *, name: str | None = None) -> CaptureReader:
    """Open a pcap or pcapng file, plain or gzipped, for streaming.

    `name` replaces the path in error messages and warnings. Raises `CaptureError` (NOT_A_CAPTURE,
    TRUNCATED_HEADER, UNSUPPORTED_VERSION, BAD_COMPRESSION) and `OSError` if the file cannot be opened.
    """
    spath = os.fspath(path)
    raw = open(spath, "rb")  # noqa: SIM115 - owned by the reader, closed by its close()
    try:
        return CaptureReader(raw, spath, name=name)
    except BaseException:
        raw.close()
        raise


class PcapWriter:
    """Write a classic pcap stream: a file header now, then one record per `write` call."""

    def __init__(
        self,
        fileobj: BinaryIO,
        linktype: int = 1,
        nanosecond: bool = False,
        *,
        snaplen: int = 262144,
        big_endian: bool = False,
    ):
        self._f = fileobj
        self._order = ">" if big_endian else "<"
        self._units = 1_000_000_000 if nanosecond else 1_000_000
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self._rec = struct.Struct(self._order + "IIII")
        fileobj.write(struct.pack(self._order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts: float, frame: bytes, *, orig_len: int | None = None) -> None:
        """Append one record with timestamp `ts` (seconds since the epoch)."""
        sec, frac = divmod(round(ts * self._units), self._units)
        length = len(frame) if orig_len is None else orig_len
        self._f.write(self._rec.pack(sec, frac, len(frame), length))
        self._f.write(frame)
