"""Live capture: frames from network interfaces through a memory-mapped AF_PACKET ring (Linux).

A `LiveSource` yields the same ``(ts, linktype, frame)`` records as `capture.pcapio`, in batches, so
the daemon feeds `capture.netlayers.PacketDecoder` and `capture.engine.CaptureEngine` exactly as
``ingest`` does from a file.

Why AF_PACKET with a TPACKET_V3 ring, not libpcap's read loop
    libpcap on Linux is itself a TPACKET_V3 ring, but driving it from Python means ``pcap_dispatch``
    with one ctypes callback per packet (a few microseconds each, holding the GIL) or one
    ``pcap_next_ex`` call per packet. Reading the ring ourselves costs one ``poll`` per *block* (1-4 MiB,
    thousands of packets) and, per packet, one ``struct.unpack_from`` and one slice out of the mmap:
    no syscall and no foreign call per packet. libpcap is still used where it is good: compiling the
    filter expression to classic BPF (`capture.bpf`), which the kernel then runs before a packet is
    copied into the ring.

How the ring works (packet(7), Documentation/networking/packet_mmap.rst)
    The ring is ``block_nr`` blocks of ``block_size`` bytes shared with the kernel. The kernel fills
    the current block with packets (each a ``tpacket3_hdr`` + ``sockaddr_ll`` + the frame, chained by
    ``tp_next_offset``) and hands it to us by setting ``TP_STATUS_USER`` in the block descriptor when it
    is full or ``retire_ms`` after its first packet. We walk it, copy the frames out, and give it back
    by writing ``TP_STATUS_KERNEL``. Blocks are filled strictly in order, so we only ever look at the
    next one. When every block is ours the kernel drops packets and counts them
    (``PACKET_STATISTICS``: ``tp_drops``; ``tp_freeze_q_cnt`` counts times the queue froze).
    Memory ordering: we read ``block_status`` before the packets, both plain loads; that is ordered on
    x86-64 (loads are not reordered with loads) and, on weaker CPUs, separated by far more than the
    interpreter's own barriers (every bytecode goes through the eval loop's atomics).

Link types
    Ethernet interfaces and Linux ``lo`` (ARPHRD_LOOPBACK, which carries zeroed Ethernet headers) are
    read raw: LINKTYPE_ETHERNET. Anything else (tun, WireGuard, ``any``) is read cooked
    (``SOCK_DGRAM``): we rebuild the 16-byte Linux SLL header from the ``sockaddr_ll`` the kernel puts
    beside each packet, LINKTYPE_LINUX_SLL, and compile the filter for raw IP because a cooked
    socket's kernel filter sees the packet from the network header on. A VLAN tag the NIC stripped
    (``TP_STATUS_VLAN_VALID``) is put back into the Ethernet header, as libpcap does.

Loopback duplicates
    On ``lo`` every packet passes the packet taps twice: once leaving (PACKET_OUTGOING) and once
    arriving (PACKET_HOST). libpcap hides the outgoing copy; we ask the kernel not to deliver outgoing
    packets on ``lo`` at all (``PACKET_IGNORE_OUTGOING``, Linux 4.20+) and skip them by ``sll_pkttype``
    on older kernels and on ``any`` (for ``lo``'s index only). On other interfaces both directions are
    wanted: a sniffer on a SIP server sees the server's own packets as outgoing.

Drops we cause
    `CaptureThread` reads a source on its own thread into a bounded `queue.Queue`; when the consumer
    falls behind, a whole batch is dropped and counted (`own_drops`, in frames) rather than letting
    the queue grow. Kernel drops (ring full) and our drops are reported separately.

Errors: everything that stops a source from opening is a `LiveCaptureError` naming what is missing
(Linux, CAP_NET_RAW, the interface, ring memory); a bad filter is a `capture.bpf.FilterError`.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import queue
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from capture.bpf import DLT_EN10MB, DLT_RAW, FilterError, attach_filter, compile_filter

__all__ = [
    "Batch",
    "CaptureThread",
    "LiveCapture",
    "LiveCaptureError",
    "LiveSource",
    "LiveStats",
    "open_sources",
]

Record = tuple[float, int, bytes]
Batch = list[Record]
"""Frames read together: (seconds since the epoch, LINKTYPE_* value, frame bytes) each."""

LINKTYPE_ETHERNET: Final = 1
LINKTYPE_LINUX_SLL: Final = 113

SOL_PACKET: Final = 263
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
PACKET_IGNORE_OUTGOING: Final = 23
TPACKET_V3: Final = 2
ETH_P_ALL: Final = 0x0003
SIOCGIFHWADDR: Final = 0x8927
ARPHRD_ETHER: Final = 1
ARPHRD_LOOPBACK: Final = 772
PACKET_OUTGOING: Final = 4

TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
TP_STATUS_VLAN_VALID: Final = 0x10
TP_STATUS_VLAN_TPID_VALID: Final = 0x40

_FRAME_SIZE: Final = 2048  # tp_frame_size: meaningless for V3 rings but checked by the kernel
_PAGE: Final = mmap.PAGESIZE

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, ...
_BLOCK_STATUS: Final = 8
_block_hdr = struct.Struct("=III").unpack_from  # block_status, num_pkts, offset_to_first_pkt (at 8)
_set_u32 = struct.Struct("=I").pack_into
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, tp_net
_pkt_hdr = struct.Struct("=IIIIIIH").unpack_from
_vlan = struct.Struct("=IH").unpack_from  # hv1.tp_vlan_tci (at 32), hv1.tp_vlan_tpid (at 36)
# struct sockaddr_ll after TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) = 48: family, protocol (network
# order), ifindex, hatype, pkttype, halen, addr[8]
_SLL: Final = 48
_sll = struct.Struct("=H2siHBB8s").unpack_from
_sll_header = struct.Struct("!HHH8s").pack  # LINKTYPE_LINUX_SLL: pkttype, hatype, halen, addr; + protocol
_stats = struct.Struct("=III")  # struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt

_PERMISSION_HINT: Final = (
    "live capture needs CAP_NET_RAW: run as root, start the container with --cap-add NET_RAW, "
    "or grant the interpreter `setcap cap_net_raw,cap_net_admin+eip`"
)


class LiveCaptureError(Exception):
    """A live source cannot be opened or read; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class LiveStats:
    """Counters of one source since it was opened."""

    packets: int
    """Packets that passed the kernel filter, delivered or dropped (kernel tp_packets; on ``lo``
    without PACKET_IGNORE_OUTGOING this includes the outgoing copies we skip)."""
    kernel_drops: int
    """Packets the kernel dropped because every ring block was waiting for us (tp_drops)."""
    freeze_count: int
    """Times the ring's queue froze for lack of a free block (tp_freeze_q_cnt)."""
    blocks: int
    """Ring blocks read."""
    frames: int
    """Frames returned by `LiveSource.read_batch`."""


class LiveSource:
    """One interface read through a TPACKET_V3 ring; frames come out in batches.

    Sizes: the ring is `ring_mb` MiB in blocks of `block_kb` KiB (a multiple of the page size; a
    packet larger than a block is dropped by the kernel); a block is handed over when full or
    `retire_ms` ms after its first packet, which bounds capture latency. `snaplen` trims frames.
    `batch_blocks` caps how many blocks one `read_batch` returns. `bpf` is a pcap-filter(7)
    expression run by the kernel. `interface` may be ``"any"`` (all interfaces, cooked frames).
    """

    def __init__(
        self,
        interface: str,
        *,
        bpf: str | None = None,
        ring_mb: int = 128,
        block_kb: int = 2048,
        snaplen: int = 262144,
        poll_timeout: float = 0.1,
        retire_ms: int = 50,
        batch_blocks: int = 8,
    ) -> None:
        block_size = block_kb * 1024
        if block_kb <= 0 or block_size % _PAGE:
            raise ValueError(f"block_kb must be a positive multiple of the page size ({_PAGE // 1024} KiB)")
        if ring_mb * (1 << 20) < block_size:
            raise ValueError("ring_mb must hold at least one block")
        self.interface = interface
        self.bpf = bpf
        self.block_size = block_size
        self.block_nr = ring_mb * (1 << 20) // block_size
        self.snaplen = snaplen
        self.poll_timeout = poll_timeout
        self.retire_ms = retire_ms
        self.batch_blocks = max(1, batch_blocks)
        self.linktype = LINKTYPE_ETHERNET
        """LINKTYPE_* of the frames this source returns (known after `open`)."""
        self.cooked = False
        self._sock: socket.socket | None = None
        self._ring: mmap.mmap | None = None
        self._poll: select.poll | None = None
        self._block = 0
        self._skip_outgoing_ifindex = -1  # skip PACKET_OUTGOING copies with this ifindex (lo)
        self._packets = 0
        self._drops = 0
        self._freezes = 0
        self._blocks = 0
        self._frames = 0
        self._stats_lock = threading.Lock()  # stats() may be called from another thread

    def __repr__(self) -> str:
        state = "open" if self._sock is not None else "closed"
        return f"<LiveSource {self.interface!r} {state} linktype={self.linktype} ring={self.block_nr}x{self.block_size}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create the socket, attach the filter, map the ring, bind. Idempotent.

        Raises `LiveCaptureError` (not Linux, no CAP_NET_RAW, unknown interface, ring too large for
        memory) and `capture.bpf.FilterError` (bad filter expression).
        """
        if self._sock is not None:
            return
        if not sys.platform.startswith("linux") or not hasattr(socket, "AF_PACKET"):
            raise LiveCaptureError(f"live capture needs Linux AF_PACKET sockets (this is {sys.platform})")
        any_device = self.interface == "any"
        if not any_device:
            try:
                socket.if_nametoindex(self.interface)
            except OSError as exc:
                raise LiveCaptureError(f"no such network interface: {self.interface!r}") from exc
        self.cooked = any_device or _arphrd(self.interface) not in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        self.linktype = LINKTYPE_LINUX_SLL if self.cooked else LINKTYPE_ETHERNET
        program = (
            compile_filter(self.bpf, DLT_RAW if self.cooked else DLT_EN10MB, self.snaplen)
            if self.bpf is not None
            else None
        )
        kind = socket.SOCK_DGRAM if self.cooked else socket.SOCK_RAW
        # A named interface: open with protocol 0 (nothing is delivered) and bind with ETH_P_ALL
        # once filter and ring are in place, so no unfiltered packet from another interface gets in
        # (libpcap does the same). "any" cannot be bound by name: open with ETH_P_ALL; setting the
        # ring purges whatever was queued before the filter was attached.
        proto = socket.htons(ETH_P_ALL) if any_device else 0
        try:
            sock = socket.socket(socket.AF_PACKET, kind, proto)
        except PermissionError as exc:
            raise LiveCaptureError(f"cannot open an AF_PACKET socket on {self.interface!r}: {_PERMISSION_HINT}") from exc
        try:
            if program is not None:
                attach_filter(sock, program)
            self._setup_ring(sock)
            lo = socket.if_nametoindex("lo") if any_device or self.interface == "lo" else -1
            if self.interface == "lo":
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                except OSError:
                    self._skip_outgoing_ifindex = lo
            elif any_device:
                self._skip_outgoing_ifindex = lo
            if not any_device:
                sock.bind((self.interface, ETH_P_ALL))
            sock.setblocking(False)
        except FilterError:
            self._teardown(sock)
            raise
        except PermissionError as exc:
            self._teardown(sock)
            raise LiveCaptureError(f"cannot set up capture on {self.interface!r}: {_PERMISSION_HINT}") from exc
        except OSError as exc:
            self._teardown(sock)
            if exc.errno == errno.ENOMEM:
                raise LiveCaptureError(
                    f"cannot allocate a {self.block_nr * self.block_size >> 20} MiB capture ring on "
                    f"{self.interface!r}: lower ring_mb"
                ) from exc
            raise LiveCaptureError(f"cannot set up capture on {self.interface!r}: {exc}") from exc
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        self._sock = sock
        self._poll = poller
        self._block = 0

    def _setup_ring(self, sock: socket.socket) -> None:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frames_per_block = self.block_size // _FRAME_SIZE
        # struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov (ms),
        # sizeof_priv, feature_req_word
        req = struct.pack(
            "=7I", self.block_size, self.block_nr, _FRAME_SIZE, frames_per_block * self.block_nr,
            self.retire_ms, 0, 0,
        )
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._ring = mmap.mmap(
            sock.fileno(), self.block_size * self.block_nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )

    def _teardown(self, sock: socket.socket) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        sock.close()

    def close(self) -> None:
        """Fold in the last kernel counters, unmap the ring, close the socket. Idempotent."""
        sock = self._sock
        if sock is None:
            return
        try:
            self._read_kernel_stats()
        except OSError:
            pass
        self._sock = None
        self._poll = None
        self._teardown(sock)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        """The socket's descriptor (readable when a block is ready), e.g. for an event loop."""
        if self._sock is None:
            raise LiveCaptureError(f"live source {self.interface!r} is not open")
        return self._sock.fileno()

    # -- reading ---------------------------------------------------------------------------------

    def read_batch(self, timeout: float | None = None) -> Batch:
        """Frames of the ring blocks that are ready (at most `batch_blocks` blocks), waiting up to
        `timeout` seconds (default `poll_timeout`; 0 = do not wait) for the first one.

        Returns an empty list when nothing arrived in time: callers use that as an idle tick.
        Raises `LiveCaptureError` if the source is not open.
        """
        if self._ring is None or self._poll is None:
            raise LiveCaptureError(f"live source {self.interface!r} is not open")
        frames: Batch = []
        if self._collect(frames):
            return frames
        wait = self.poll_timeout if timeout is None else timeout
        if wait <= 0:
            return frames
        deadline = time.monotonic() + wait
        poll = self._poll.poll
        while True:
            poll(max(1, int(wait * 1000 + 0.999)))
            if self._collect(frames):
                return frames
            wait = deadline - time.monotonic()
            if wait <= 0:
                return frames

    def _collect(self, frames: Batch) -> int:
        """Append the frames of ready blocks to `frames`; return how many blocks were read."""
        ring = self._ring
        assert ring is not None
        block = self._block
        block_size = self.block_size
        block_nr = self.block_nr
        done = 0
        while done < self.batch_blocks:
            base = block * block_size
            status, count, first = _block_hdr(ring, base + _BLOCK_STATUS)
            if not status & TP_STATUS_USER:
                break
            if self.cooked or self._skip_outgoing_ifindex >= 0:
                self._walk_general(ring, base + first, count, frames)
            else:
                self._walk_ethernet(ring, base + first, count, frames)
            _set_u32(ring, base + _BLOCK_STATUS, TP_STATUS_KERNEL)
            block = block + 1 if block + 1 < block_nr else 0
            done += 1
        if done:
            self._block = block
            self._blocks += done
        return done

    def _walk_ethernet(self, ring: mmap.mmap, off: int, count: int, frames: Batch) -> None:
        """The hot loop: raw Ethernet frames, one unpack and one slice per packet."""
        linktype = self.linktype
        snaplen = self.snaplen
        append = frames.append
        for _ in range(count):
            step, sec, nsec, caplen, _wire, status, mac = _pkt_hdr(ring, off)
            start = off + mac
            if status & TP_STATUS_VLAN_VALID:
                append((sec + nsec * 1e-9, linktype, _with_vlan(ring, off, start, min(caplen, snaplen), status)))
            else:
                append((sec + nsec * 1e-9, linktype, ring[start : start + min(caplen, snaplen)]))
            off += step
        self._frames += count

    def _walk_general(self, ring: mmap.mmap, off: int, count: int, frames: Batch) -> None:
        """Cooked frames (SLL header rebuilt) and/or skipping lo's outgoing copies."""
        linktype = self.linktype
        snaplen = self.snaplen
        cooked = self.cooked
        skip_ifindex = self._skip_outgoing_ifindex
        added = 0
        for _ in range(count):
            step, sec, nsec, caplen, _wire, status, mac = _pkt_hdr(ring, off)
            _fam, proto, ifindex, hatype, pkttype, halen, addr = _sll(ring, off + _SLL)
            if pkttype == PACKET_OUTGOING and ifindex == skip_ifindex:
                off += step
                continue
            start = off + mac
            length = min(caplen, snaplen)
            if cooked:
                frame = _sll_header(pkttype, hatype, halen, addr) + proto + ring[start : start + length]
            elif status & TP_STATUS_VLAN_VALID:
                frame = _with_vlan(ring, off, start, length, status)
            else:
                frame = ring[start : start + length]
            frames.append((sec + nsec * 1e-9, linktype, frame))
            added += 1
            off += step
        self._frames += added

    # -- counters --------------------------------------------------------------------------------

    def _read_kernel_stats(self) -> None:
        sock = self._sock
        if sock is None:
            return
        # Reading PACKET_STATISTICS resets the kernel's counters, so they are accumulated here.
        with self._stats_lock:
            packets, drops, freezes = _stats.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _stats.size))
            self._packets += packets
            self._drops += drops
            self._freezes += freezes

    def stats(self) -> LiveStats:
        """Counters since `open` (kernel counters are read now, if the source is open)."""
        self._read_kernel_stats()
        return LiveStats(
            packets=self._packets, kernel_drops=self._drops, freeze_count=self._freezes,
            blocks=self._blocks, frames=self._frames,
        )


def _with_vlan(ring: mmap.mmap, hdr: int, start: int, length: int, status: int) -> bytes:
    """Re-insert the 802.1Q tag the NIC stripped (tp_vlan_tci) after the MAC addresses."""
    tci, tpid = _vlan(ring, hdr + 32)
    if not status & TP_STATUS_VLAN_TPID_VALID:
        tpid = 0x8100
    return ring[start : start + 12] + struct.pack("!HH", tpid, tci & 0xFFFF) + ring[start + 12 : start + length]


def _arphrd(interface: str) -> int:
    """The interface's ARPHRD_* hardware type (SIOCGIFHWADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        ifreq = struct.pack("16sH14s", interface.encode()[:15], 0, b"")
        try:
            out = fcntl.ioctl(probe.fileno(), SIOCGIFHWADDR, ifreq)
        except OSError as exc:
            raise LiveCaptureError(f"cannot read the hardware type of {interface!r}: {exc}") from exc
    return int(struct.unpack_from("H", out, 16)[0])


def open_sources(
    interfaces: Iterable[str],
    bpf: str | None = None,
    *,
    ring_mb: int = 128,
    block_kb: int = 2048,
    snaplen: int = 262144,
    poll_timeout: float = 0.1,
    retire_ms: int = 50,
) -> list[LiveSource]:
    """Open one `LiveSource` per interface with the same filter and sizes (`ring_mb` each).

    All or nothing: if one fails, those already open are closed and the error is raised.
    """
    sources: list[LiveSource] = []
    try:
        for name in interfaces:
            src = LiveSource(
                name, bpf=bpf, ring_mb=ring_mb, block_kb=block_kb, snaplen=snaplen,
                poll_timeout=poll_timeout, retire_ms=retire_ms,
            )
            src.open()
            sources.append(src)
    except BaseException:
        for src in sources:
            src.close()
        raise
    return sources


class CaptureThread:
    """Reads one open source on a daemon thread and puts non-empty batches on a bounded queue.

    When the queue is full the batch is dropped and its frames counted in `own_drops`; the ring keeps
    draining, so a slow consumer shows up as our drops, not as kernel drops. An exception stops the
    thread and is kept in `error`. The source stays open (its owner closes it after `stop`).
    """

    def __init__(self, source: LiveSource, out: queue.Queue[Batch]) -> None:
        self.source = source
        self.out = out
        self.own_drops = 0
        self.batches = 0
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{source.interface}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        read = self.source.read_batch
        put = self.out.put_nowait
        stopping = self._stop.is_set
        try:
            while not stopping():
                batch = read()
                if not batch:
                    continue
                try:
                    put(batch)
                    self.batches += 1
                except queue.Full:
                    self.own_drops += len(batch)
        except Exception as exc:  # noqa: BLE001 - kept for the owner (LiveCapture.get), never silent
            self.error = exc

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to stop and wait up to `timeout` s (it notices within `poll_timeout`).

        Returns True if it has ended.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class LiveCapture:
    """Several interfaces, one reader thread each, one bounded queue of batches for the consumer.

    ``with LiveCapture(["eth0"], bpf="udp") as cap: batch = cap.get(0.1)`` — `get` returns an
    empty list when nothing arrived within the timeout (an idle tick to advance timers). Raises from
    the constructor's `open_sources` (`LiveCaptureError`, `FilterError`). `queue_batches` bounds the
    queue; a batch is at most `batch_blocks` ring blocks.
    """

    def __init__(
        self,
        interfaces: Iterable[str],
        bpf: str | None = None,
        *,
        queue_batches: int = 64,
        ring_mb: int = 128,
        block_kb: int = 2048,
        snaplen: int = 262144,
        poll_timeout: float = 0.1,
        retire_ms: int = 50,
    ) -> None:
        self.sources = open_sources(
            interfaces, bpf, ring_mb=ring_mb, block_kb=block_kb, snaplen=snaplen,
            poll_timeout=poll_timeout, retire_ms=retire_ms,
        )
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=queue_batches)
        self.threads = [CaptureThread(src, self.queue) for src in self.sources]
        self._started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if not self._started:
            self._started = True
            for t in self.threads:
                t.start()

    def get(self, timeout: float) -> Batch:
        """The next batch, or [] after `timeout` seconds. Raises `LiveCaptureError` if a reader died."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            for t in self.threads:
                if t.error is not None:
                    raise LiveCaptureError(f"capture on {t.source.interface!r} failed: {t.error}") from t.error
            return []

    @property
    def own_drops(self) -> int:
        return sum(t.own_drops for t in self.threads)

    def stats(self) -> dict[str, LiveStats]:
        """Per-interface counters (our own drops are `own_drops`)."""
        return {src.interface: src.stats() for src in self.sources}

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the readers (joining each within `timeout`) and close the sources; True if all ended."""
        results = [t.stop(timeout) for t in self.threads]  # ask every thread, even after a failure
        ended = all(results)
        for src in self.sources:
            if ended:
                src.close()
        return ended
