"""Link, network and transport decoding: captured frames -> UDP/TCP/SCTP `Datagram`s (sans-IO).

`PacketDecoder.decode(ts, linktype, frame)` peels the link layer (Ethernet with 802.1Q/QinQ tags,
Linux SLL/SLL2, BSD null/loop, raw IP), IPv4 (with fragment reassembly) or IPv6 (extension headers
skipped, fragments reassembled), then tunnels (GRE with ERSPAN II/III, VXLAN, IP-in-IP, IPv6-in-IP,
MPLS) down to the innermost UDP, TCP or SCTP datagram. Anything else returns None and is counted by
reason in `PacketDecoder.skipped`; malformed bytes never raise out of `decode`.

The inner functions raise `NetDecodeError` (reason + byte offset into the frame being decoded, or into
the reassembled payload); `decode` catches it and counts ``reason.value``.

Fragment reassembly (RFC 791 section 3.2, RFC 815 for the hole bookkeeping idea, RFC 8200 section 4.5)
keeps at most `max_pending` datagrams; a datagram whose first fragment is older than
`fragment_timeout` seconds of *record time* is dropped and counted as "fragment-timeout".
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "PROTO_SCTP",
    "PROTO_TCP",
    "PROTO_UDP",
    "Datagram",
    "NetDecodeError",
    "NetDecodeReason",
    "PacketDecoder",
]

LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_SCTP: Final = 132
_PROTO_IPIP: Final = 4
_PROTO_IPV6: Final = 41
_PROTO_GRE: Final = 47

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset((0x8100, 0x88A8, 0x9100))
_ETH_MPLS: Final = frozenset((0x8847, 0x8848))
_ETH_PPPOE: Final = 0x8864  # PPPoE session stage (RFC 2516)
_PPP_IPV4: Final = 0x0021
_PPP_IPV6: Final = 0x0057
_ETH_TEB: Final = 0x6558  # transparent Ethernet bridging (GRE)
_ETH_ERSPAN2: Final = 0x88BE
_ETH_ERSPAN3: Final = 0x22EB

# IPv6 extension headers with the generic (next header, length in 8-octet units - 1) layout, RFC 8200 4.
_IPV6_EXT: Final = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAG: Final = 44
_IPV6_AH: Final = 51
_IPV6_NONE: Final = 59

# BSD DLT_NULL address families: AF_INET is 2 everywhere; AF_INET6 is 24, 28 or 30 depending on the OS.
_AF_INET6: Final = frozenset((10, 24, 28, 30))

VXLAN_PORT: Final = 4789
MAX_DEPTH: Final = 8
"""Most nested link/IP layers (tunnels inside tunnels) we follow before giving up."""
MAX_MPLS_LABELS: Final = 16
MAX_FRAGMENTS: Final = 128
"""Most fragments we hold for one datagram."""

_ADDR_CACHE_SIZE: Final = 4096

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_ipv4_hdr = struct.Struct("!BxHHHxB2x4s4s").unpack_from  # ver/ihl, total, id, flags+frag, proto, src, dst
# From the IPv4 total length on: total, flags+fragment offset, protocol, src, dst, then UDP ports and length.
_fast_hdr = struct.Struct("!H2xH1xB2x4s4sHHH").unpack_from
_udp_hdr = struct.Struct("!HHH").unpack_from  # sport, dport, length
_tcp_hdr = struct.Struct("!HHIIBB").unpack_from  # sport, dport, seq, ack, offset, flags
_ipv6_hdr = struct.Struct("!HB").unpack_from  # payload length, next header (at offset 4)


class NetDecodeReason(enum.Enum):
    """Why a frame gave no datagram; the value is the key counted in `PacketDecoder.skipped`."""

    UNSUPPORTED_LINKTYPE = "unsupported-linktype"
    TRUNCATED_LINK = "truncated-link"
    NOT_IP = "not-ip"
    TRUNCATED_IP = "truncated-ip"
    BAD_IP_HEADER = "bad-ip-header"
    NOT_TRANSPORT = "not-transport"
    TRUNCATED_UDP = "truncated-udp"
    BAD_UDP_HEADER = "bad-udp-header"
    TRUNCATED_TCP = "truncated-tcp"
    BAD_TCP_HEADER = "bad-tcp-header"
    TRUNCATED_SCTP = "truncated-sctp"
    TRUNCATED_TUNNEL = "truncated-tunnel"
    UNSUPPORTED_TUNNEL = "unsupported-tunnel"
    TOO_DEEP = "too-deep"
    BAD_FRAGMENT = "bad-fragment"


class NetDecodeError(Exception):
    """A layer of a frame could not be decoded: `reason` at byte `offset`."""

    def __init__(self, reason: NetDecodeReason, offset: int, message: str = ""):
        super().__init__(f"{reason.value} at byte {offset}" + (f": {message}" if message else ""))
        self.reason = reason
        self.offset = offset


@dataclass(slots=True, eq=True)
class Datagram:
    """One transport-layer datagram out of a frame (the innermost one when tunnelled)."""

    ts: float
    """Capture time, seconds since the epoch."""
    proto: int
    """IP protocol number: 17 UDP, 6 TCP, 132 SCTP."""
    src: str
    """Source address as text ("192.0.2.1", "2001:db8::1")."""
    sport: int
    dst: str
    dport: int
    payload: bytes
    """UDP payload, TCP segment data, or the SCTP chunks after the 12-byte common header."""
    tcp_seq: int = 0
    """TCP sequence number (0 for UDP/SCTP)."""
    tcp_flags: int = 0
    """TCP flags, 9 bits with NS as 0x100 (0 for UDP/SCTP)."""


class _Pending:
    """Fragments of one datagram awaiting the rest."""

    __slots__ = ("first_ts", "parts", "total")

    def __init__(self, first_ts: float):
        self.first_ts = first_ts
        self.parts: dict[int, bytes] = {}
        self.total = -1  # payload length, known once the last fragment (MF clear) arrives


class PacketDecoder:
    """Frames in, datagrams out; holds fragment state, an address text cache and skip counters.

    `decode` is the entry point for captured frames, `decode_ip` for bare IP packets. Time is only
    the `ts` passed in. Counters: `skipped` (reason -> frames), `datagrams`, `reassembled`.
    """

    def __init__(
        self,
        *,
        fragment_timeout: float = 30.0,
        max_pending: int = 1024,
        vxlan_ports: frozenset[int] = frozenset((VXLAN_PORT,)),
    ):
        self.fragment_timeout = fragment_timeout
        self.max_pending = max_pending
        self.vxlan_ports = vxlan_ports
        self.skipped: collections.Counter[str] = collections.Counter()
        self.datagrams = 0
        self.reassembled = 0
        self._pending: dict[tuple[object, ...], _Pending] = {}
        self._addrs: dict[bytes, str] = {}

    # -- entry points ------------------------------------------------------------------------------

    def decode(self, ts: float, linktype: int, frame: bytes) -> Datagram | None:
        """Decode one captured frame; None (counted in `skipped`) unless it holds a datagram."""
        if self._pending and ts - next(iter(self._pending.values())).first_ts > self.fragment_timeout:
            self._expire(ts)
        # Fast path: Ethernet, IPv4 without options or fragmentation, UDP, nothing to tunnel.
        if linktype == LINKTYPE_ETHERNET and len(frame) >= 42 and frame[12:15] == b"\x08\x00\x45":
            total, frag, proto, src, dst, sport, dport, ulen = _fast_hdr(frame, 16)
            if (
                proto == PROTO_UDP
                and not frag & 0x3FFF
                and 28 <= total <= len(frame) - 14
                and 8 <= ulen <= total - 20
                and dport not in self.vxlan_ports
            ):
                addrs = self._addrs
                self.datagrams += 1
                return Datagram(
                    ts,
                    PROTO_UDP,
                    addrs.get(src) or self._addr(src),
                    sport,
                    addrs.get(dst) or self._addr(dst),
                    dport,
                    frame[42 : 34 + ulen],
                )
        try:
            if linktype == LINKTYPE_ETHERNET:
                dgram = self._ethernet(ts, frame, 0, len(frame), 0)
            else:
                dgram = self._link(ts, linktype, frame, 0, len(frame), 0)
        except NetDecodeError as exc:
            self.skipped[exc.reason.value] += 1
            return None
        if dgram is not None:
            self.datagrams += 1
        return dgram

    def decode_ip(self, ts: float, data: bytes) -> Datagram | None:
        """Decode a bare IPv4 or IPv6 packet (version from the first nibble)."""
        return self.decode(ts, LINKTYPE_RAW, data)

    def expire(self, now: float) -> int:
        """Drop fragment sets older than the timeout at `now`; return how many were dropped."""
        before = len(self._pending)
        self._expire(now)
        return before - len(self._pending)

    @property
    def pending_fragments(self) -> int:
        """Datagrams with fragments held, waiting for the rest."""
        return len(self._pending)

    # -- link layers -------------------------------------------------------------------------------

    def _link(self, ts: float, linktype: int, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if linktype == LINKTYPE_ETHERNET:
            return self._ethernet(ts, data, off, end, depth)
        if linktype in (LINKTYPE_RAW, 12, 14):
            return self._ip(ts, data, off, end, depth)
        if linktype == LINKTYPE_LINUX_SLL:
            if end - off < 16:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_LINK, off, "SLL header")
            return self._ethertype(ts, _u16(data, off + 14)[0], data, off + 16, end, depth)
        if linktype == LINKTYPE_LINUX_SLL2:
            if end - off < 20:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_LINK, off, "SLL2 header")
            return self._ethertype(ts, _u16(data, off)[0], data, off + 20, end, depth)
        if linktype == LINKTYPE_IPV4:
            return self._ipv4(ts, data, off, end, depth)
        if linktype == LINKTYPE_IPV6:
            return self._ipv6(ts, data, off, end, depth)
        if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
            if end - off < 4:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_LINK, off, "loopback header")
            family = _u32(data, off)[0]
            if linktype == LINKTYPE_NULL and family > 0xFFFF:
                # DLT_NULL is in the capturing host's byte order; small values tell which it was.
                family = int.from_bytes(data[off : off + 4], "little")
            if family == 2:
                return self._ipv4(ts, data, off + 4, end, depth)
            if family in _AF_INET6:
                return self._ipv6(ts, data, off + 4, end, depth)
            raise NetDecodeError(NetDecodeReason.NOT_IP, off, f"address family {family}")
        raise NetDecodeError(NetDecodeReason.UNSUPPORTED_LINKTYPE, 0, f"link type {linktype}")

    def _ethernet(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if end - off < 14:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_LINK, off, "Ethernet header")
        etype = (data[off + 12] << 8) | data[off + 13]
        if etype == _ETH_IPV4:
            return self._ipv4(ts, data, off + 14, end, depth)
        return self._ethertype(ts, etype, data, off + 14, end, depth)

    def _ethertype(
        self, ts: float, etype: int, data: bytes, off: int, end: int, depth: int
    ) -> Datagram | None:
        # 802.1Q / 802.1ad tags: a 2-byte TCI then the next ethertype. Bounded by the frame length.
        while etype in _ETH_VLAN:
            if end - off < 4:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_LINK, off, "VLAN tag")
            etype = _u16(data, off + 2)[0]
            off += 4
        if etype == _ETH_IPV4:
            return self._ipv4(ts, data, off, end, depth)
        if etype == _ETH_IPV6:
            return self._ipv6(ts, data, off, end, depth)
        if etype in _ETH_MPLS:
            return self._mpls(ts, data, off, end, depth)
        if etype == _ETH_TEB:
            return self._nested_ethernet(ts, data, off, end, depth)
        if etype == _ETH_PPPOE:
            return self._pppoe(ts, data, off, end, depth)
        raise NetDecodeError(NetDecodeReason.NOT_IP, off, f"ethertype {etype:#06x}")

    def _pppoe(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        # 6-byte PPPoE header (version/type, code, session id, length), then the 2-byte PPP protocol.
        if end - off < 8:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_LINK, off, "PPPoE header")
        ppp = _u16(data, off + 6)[0]
        if ppp == _PPP_IPV4:
            return self._ipv4(ts, data, off + 8, end, depth)
        if ppp == _PPP_IPV6:
            return self._ipv6(ts, data, off + 8, end, depth)
        raise NetDecodeError(NetDecodeReason.NOT_IP, off, f"PPP protocol {ppp:#06x}")

    def _nested_ethernet(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if depth >= MAX_DEPTH:
            raise NetDecodeError(NetDecodeReason.TOO_DEEP, off)
        return self._ethernet(ts, data, off, end, depth + 1)

    def _mpls(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        for _ in range(MAX_MPLS_LABELS):
            if end - off < 4:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_TUNNEL, off, "MPLS label")
            bottom = data[off + 2] & 0x01
            off += 4
            if bottom:
                break
        else:
            raise NetDecodeError(NetDecodeReason.TOO_DEEP, off, "MPLS label stack")
        if off >= end:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_TUNNEL, off, "MPLS payload")
        # No protocol field: guess from the first nibble (RFC 4928); 0 is a pseudowire control word
        # (RFC 4385) followed by an Ethernet frame.
        nibble = data[off] >> 4
        if nibble == 4:
            return self._ipv4(ts, data, off, end, depth)
        if nibble == 6:
            return self._ipv6(ts, data, off, end, depth)
        if nibble == 0:
            return self._nested_ethernet(ts, data, off + 4, end, depth)
        raise NetDecodeError(NetDecodeReason.NOT_IP, off, "MPLS payload")

    # -- IP ----------------------------------------------------------------------------------------

    def _ip(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if off >= end:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, off)
        version = data[off] >> 4
        if version == 4:
            return self._ipv4(ts, data, off, end, depth)
        if version == 6:
            return self._ipv6(ts, data, off, end, depth)
        raise NetDecodeError(NetDecodeReason.NOT_IP, off, f"IP version {version}")

    def _addr(self, raw: bytes) -> str:
        text = self._addrs.get(raw)
        if text is None:
            if len(self._addrs) >= _ADDR_CACHE_SIZE:
                self._addrs.clear()
            ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
            text = self._addrs[raw] = str(ip)
        return text

    def _ipv4(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if end - off < 20:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, off, "IPv4 header")
        vihl, total, ident, frag, proto, src, dst = _ipv4_hdr(data, off)
        hlen = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or hlen < 20:
            raise NetDecodeError(NetDecodeReason.BAD_IP_HEADER, off, "IPv4 version/IHL")
        if total == 0:
            total = end - off  # TCP segmentation offload on the capturing host leaves 0 here
        if total < hlen:
            raise NetDecodeError(NetDecodeReason.BAD_IP_HEADER, off, "IPv4 total length")
        if off + total > end:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, off, "IPv4 packet")
        end = off + total  # drop Ethernet padding and trailers
        start = off + hlen
        addrs = self._addrs
        s = addrs.get(src) or self._addr(src)
        d = addrs.get(dst) or self._addr(dst)
        if frag & 0x3FFF:  # MF set or non-zero offset (RFC 791 3.2)
            whole = self._fragment(
                ts, (4, src, dst, ident, proto), (frag & 0x1FFF) << 3, frag & 0x2000, data, start, end
            )
            if whole is None:
                return None
            return self._transport(ts, proto, s, d, whole, 0, len(whole), depth)
        if proto == PROTO_UDP:
            if end - start < 8:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_UDP, start)
            sport, dport, ulen = _udp_hdr(data, start)
            if ulen < 8:
                raise NetDecodeError(NetDecodeReason.BAD_UDP_HEADER, start, f"UDP length {ulen}")
            if start + ulen > end:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_UDP, start)
            if dport in self.vxlan_ports:
                return self._vxlan(ts, s, d, sport, dport, data, start, start + ulen, depth)
            return Datagram(ts, PROTO_UDP, s, sport, d, dport, data[start + 8 : start + ulen])
        return self._transport(ts, proto, s, d, data, start, end, depth)

    def _ipv6(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if end - off < 40:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, off, "IPv6 header")
        if data[off] >> 4 != 6:
            raise NetDecodeError(NetDecodeReason.BAD_IP_HEADER, off, "IPv6 version")
        plen, nh = _ipv6_hdr(data, off + 4)
        start = off + 40
        if plen == 0:
            plen = end - start  # jumbogram (RFC 2675) or offload: trust the capture
        if start + plen > end:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, off, "IPv6 packet")
        end = start + plen
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        s = self._addrs.get(src) or self._addr(src)
        d = self._addrs.get(dst) or self._addr(dst)
        while True:
            if nh in _IPV6_EXT or nh == _IPV6_AH:
                if end - start < 8:
                    raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, start, "IPv6 extension header")
                hlen = (data[start + 1] + 2) << 2 if nh == _IPV6_AH else (data[start + 1] + 1) << 3
                nh = data[start]
                start += hlen
                if start > end:
                    raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, start, "IPv6 extension header")
            elif nh == _IPV6_FRAG:
                if end - start < 8:
                    raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, start, "IPv6 fragment header")
                nh = data[start]
                offmf = _u16(data, start + 2)[0]
                ident = _u32(data, start + 4)[0]
                start += 8
                if offmf & 0xFFF9 == 0:
                    continue  # atomic fragment (RFC 6946): offset 0, M clear
                whole = self._fragment(
                    ts, (6, src, dst, ident, nh), offmf & 0xFFF8, offmf & 1, data, start, end
                )
                if whole is None:
                    return None
                # The reassembled payload may still start with extension headers (RFC 8200 4.5).
                return self._ipv6_upper(ts, nh, s, d, whole, depth)
            elif nh == _IPV6_NONE:
                raise NetDecodeError(NetDecodeReason.NOT_TRANSPORT, start, "no next header")
            else:
                return self._transport(ts, nh, s, d, data, start, end, depth)

    def _ipv6_upper(self, ts: float, nh: int, s: str, d: str, data: bytes, depth: int) -> Datagram | None:
        start, end = 0, len(data)
        while nh in _IPV6_EXT or nh == _IPV6_AH:
            if end - start < 8:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, start, "IPv6 extension header")
            hlen = (data[start + 1] + 2) << 2 if nh == _IPV6_AH else (data[start + 1] + 1) << 3
            nh = data[start]
            start += hlen
            if start > end:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_IP, start, "IPv6 extension header")
        return self._transport(ts, nh, s, d, data, start, end, depth)

    # -- fragments ---------------------------------------------------------------------------------

    def _fragment(
        self,
        ts: float,
        key: tuple[object, ...],
        frag_off: int,
        more: int,
        data: bytes,
        start: int,
        end: int,
    ) -> bytes | None:
        """Hold one fragment; return the whole payload once every byte from 0 to the end is present."""
        length = end - start
        if length <= 0 or frag_off + length > 0xFFFF + 0xFFFF:
            raise NetDecodeError(NetDecodeReason.BAD_FRAGMENT, start, "fragment length")
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_pending:
                del self._pending[next(iter(self._pending))]
                self.skipped["fragment-overflow"] += 1
            pending = self._pending[key] = _Pending(ts)
        if not more:
            if pending.total not in (-1, frag_off + length):
                del self._pending[key]
                raise NetDecodeError(NetDecodeReason.BAD_FRAGMENT, start, "two different last fragments")
            pending.total = frag_off + length
        if frag_off not in pending.parts or len(pending.parts[frag_off]) < length:
            if len(pending.parts) >= MAX_FRAGMENTS:
                del self._pending[key]
                raise NetDecodeError(NetDecodeReason.BAD_FRAGMENT, start, "too many fragments")
            pending.parts[frag_off] = data[start:end]
        if pending.total < 0:
            self.skipped["fragment-pending"] += 1
            return None
        # Walk the parts in offset order; the datagram is whole when no hole is left (RFC 815).
        covered = 0
        for o in sorted(pending.parts):
            if o > covered:
                self.skipped["fragment-pending"] += 1
                return None
            covered = max(covered, o + len(pending.parts[o]))
        if covered < pending.total:
            self.skipped["fragment-pending"] += 1
            return None
        del self._pending[key]
        whole = bytearray(pending.total)
        # Earlier offsets first, later ones overwrite overlaps: what matters is not crashing.
        for o in sorted(pending.parts):
            part = pending.parts[o][: pending.total - o]
            whole[o : o + len(part)] = part
        self.reassembled += 1
        return bytes(whole)

    def _expire(self, now: float) -> None:
        limit = now - self.fragment_timeout
        stale = [k for k, p in self._pending.items() if p.first_ts < limit]
        for k in stale:
            del self._pending[k]
        if stale:
            self.skipped["fragment-timeout"] += len(stale)

    # -- transport and tunnels ---------------------------------------------------------------------

    def _transport(
        self, ts: float, proto: int, s: str, d: str, data: bytes, start: int, end: int, depth: int
    ) -> Datagram | None:
        if proto == PROTO_UDP:
            if end - start < 8:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_UDP, start)
            sport, dport, ulen = _udp_hdr(data, start)
            if ulen == 0 and end - start > 0xFFFF:
                ulen = end - start  # IPv6 jumbogram UDP (RFC 2675 4)
            if ulen < 8:
                raise NetDecodeError(NetDecodeReason.BAD_UDP_HEADER, start, f"UDP length {ulen}")
            if start + ulen > end:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_UDP, start)
            if dport in self.vxlan_ports:
                return self._vxlan(ts, s, d, sport, dport, data, start, start + ulen, depth)
            return Datagram(ts, PROTO_UDP, s, sport, d, dport, data[start + 8 : start + ulen])
        if proto == PROTO_TCP:
            if end - start < 20:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_TCP, start)
            sport, dport, seq, _ack, doff, flags = _tcp_hdr(data, start)
            hlen = (doff >> 4) << 2
            if hlen < 20:
                raise NetDecodeError(NetDecodeReason.BAD_TCP_HEADER, start, "TCP data offset")
            if start + hlen > end:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_TCP, start)
            return Datagram(
                ts, PROTO_TCP, s, sport, d, dport, data[start + hlen : end], seq, ((doff & 1) << 8) | flags
            )
        if proto == PROTO_SCTP:
            if end - start < 12:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_SCTP, start)
            sport, dport = struct.unpack_from("!HH", data, start)
            return Datagram(ts, PROTO_SCTP, s, sport, d, dport, data[start + 12 : end])
        if proto == _PROTO_GRE:
            return self._gre(ts, data, start, end, depth)
        if proto == _PROTO_IPIP or proto == _PROTO_IPV6:
            if depth >= MAX_DEPTH:
                raise NetDecodeError(NetDecodeReason.TOO_DEEP, start)
            if proto == _PROTO_IPIP:
                return self._ipv4(ts, data, start, end, depth + 1)
            return self._ipv6(ts, data, start, end, depth + 1)
        raise NetDecodeError(NetDecodeReason.NOT_TRANSPORT, start, f"IP protocol {proto}")

    def _gre(self, ts: float, data: bytes, off: int, end: int, depth: int) -> Datagram | None:
        if depth >= MAX_DEPTH:
            raise NetDecodeError(NetDecodeReason.TOO_DEEP, off)
        if end - off < 4:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_TUNNEL, off, "GRE header")
        flags, ptype = struct.unpack_from("!HH", data, off)
        if flags & 0x0007:
            raise NetDecodeError(NetDecodeReason.UNSUPPORTED_TUNNEL, off, f"GRE version {flags & 7}")
        if flags & 0x4000:
            raise NetDecodeError(NetDecodeReason.UNSUPPORTED_TUNNEL, off, "GRE source routing")
        # RFC 2784 / RFC 2890: optional checksum+reserved, key and sequence words, in that order.
        hlen = 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
        inner = off + hlen
        if inner > end:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_TUNNEL, off, "GRE header")
        if ptype == _ETH_ERSPAN2:
            # ERSPAN type I has no sequence number and no header; type II has both (8-byte header).
            if flags & 0x1000:
                inner += 8
        elif ptype == _ETH_ERSPAN3:
            if end - inner < 12:
                raise NetDecodeError(NetDecodeReason.TRUNCATED_TUNNEL, inner, "ERSPAN III header")
            optional = data[inner + 11] & 0x01  # O bit: an 8-byte platform-specific subheader follows
            inner += 20 if optional else 12
        else:
            return self._ethertype(ts, ptype, data, inner, end, depth + 1)
        if inner > end:
            raise NetDecodeError(NetDecodeReason.TRUNCATED_TUNNEL, off, "ERSPAN header")
        return self._ethernet(ts, data, inner, end, depth + 1)

    def _vxlan(
        self, ts: float, s: str, d: str, sport: int, dport: int, data: bytes, start: int, end: int, depth: int
    ) -> Datagram | None:
        """Decode the Ethernet frame in a VXLAN packet (RFC 7348 5); else it is just a UDP datagram."""
        inner = start + 16
        if end - inner >= 14 and depth < MAX_DEPTH and data[start + 8] & 0x08:
            try:
                return self._ethernet(ts, data, inner, end, depth + 1)
            except NetDecodeError:
                pass
        return Datagram(ts, PROTO_UDP, s, sport, d, dport, data[start + 8 : end])
