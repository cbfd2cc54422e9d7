"""Capture filters: compile a pcap filter expression to classic BPF and attach it to a socket.

`compile_filter(expr)` runs libpcap's own compiler (``pcap_compile`` on a ``pcap_open_dead`` handle,
through ctypes, once per source at start-up; never per packet), so the accepted language is exactly
tcpdump's (pcap-filter(7)) and a mistake comes back as a `FilterError` carrying libpcap's message.
The result is a list of ``(code, jt, jf, k)`` instructions, the same numbers ``tcpdump -dd`` prints.

`attach_filter(sock, program)` hands the program to the kernel with ``SO_ATTACH_FILTER`` (Linux
``socket(7)``/``filter.txt``): the kernel then runs it on every packet before the packet reaches the
socket's ring, so traffic we do not want costs no copy and no Python at all.

The program is compiled for one link type and is only right for frames of that link type: Ethernet
(``LINKTYPE_ETHERNET``, also Linux ``lo``) for raw AF_PACKET sockets, raw IP (``DLT_RAW``) for cooked
ones, whose kernel filter sees the packet from the network header on. A compiled program does not use
Linux's ancillary BPF loads, so ``vlan`` filters test the tag in the packet bytes; on interfaces whose
NIC strips VLAN tags (the usual case) such a filter does not match — filter on what is inside instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
import threading
from typing import Final

__all__ = [
    "DLT_EN10MB",
    "DLT_RAW",
    "BpfProgram",
    "FilterError",
    "attach_filter",
    "compile_filter",
    "detach_filter",
]

BpfProgram = list[tuple[int, int, int, int]]
"""Classic BPF instructions: (opcode, jump-if-true, jump-if-false, constant k)."""

DLT_EN10MB: Final = 1
DLT_RAW: Final = 12
"""libpcap's DLT_RAW on Linux (its LINKTYPE_RAW file value is 101; pcap_open_dead takes DLT values)."""

BPF_MAXINSNS: Final = 4096
"""Longest program the Linux kernel accepts for a socket filter."""
_PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
_SO_ATTACH_FILTER: Final = getattr(socket, "SO_ATTACH_FILTER", 26)
_SO_DETACH_FILTER: Final = getattr(socket, "SO_DETACH_FILTER", 27)
_insn = struct.Struct("=HBBI")  # struct sock_filter / struct bpf_insn: u16 code, u8 jt, u8 jf, u32 k


class FilterError(Exception):
    """A filter expression libpcap refuses (message is libpcap's), or libpcap is missing."""

    def __init__(self, expr: str, message: str):
        super().__init__(f"bad capture filter {expr!r}: {message}")
        self.expr = expr
        self.message = message


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lib: ctypes.CDLL | None = None
# pcap_compile was not thread-safe before libpcap 1.8; one compile at a time costs nothing here.
_lock = threading.Lock()


def _libpcap() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("pcap")
        if name is None:
            raise FilterError("", "libpcap is not installed (Debian: apt-get install libpcap0.8)")
        lib = ctypes.CDLL(name)
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32,
        ]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_freecode.restype = None
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_close.restype = None
        _lib = lib
    return _lib


def compile_filter(expr: str, linktype: int = DLT_EN10MB, snaplen: int = 262144) -> BpfProgram:
    """Compile a pcap-filter(7) expression with libpcap's optimiser on; return its instructions.

    `linktype` is a libpcap DLT value (1 Ethernet, 12 raw IP). The program's accept instruction
    returns `snaplen`, so the kernel also trims longer packets. Raises `FilterError` with libpcap's
    message for an expression it refuses, or when libpcap cannot be loaded or the program is longer
    than the kernel accepts.
    """
    lib = _libpcap()
    with _lock:
        handle = lib.pcap_open_dead(linktype, snaplen)
        if not handle:
            raise FilterError(expr, f"libpcap cannot open a handle for link type {linktype}")
        prog = _BpfProgram()
        try:
            if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, _PCAP_NETMASK_UNKNOWN) != 0:
                err = lib.pcap_geterr(handle)
                raise FilterError(expr, err.decode(errors="replace") if err else "syntax error")
            try:
                out = [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[: prog.bf_len]]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)
    if len(out) > BPF_MAXINSNS:
        raise FilterError(expr, f"compiles to {len(out)} instructions; the kernel accepts {BPF_MAXINSNS}")
    return out


def attach_filter(sock: socket.socket, program: BpfProgram) -> None:
    """Attach `program` to `sock` (SO_ATTACH_FILTER); it replaces any filter already attached.

    Raises `OSError` if the kernel's verifier refuses it (it should not refuse libpcap's output).
    """
    code = b"".join(_insn.pack(*insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } with native alignment.
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def detach_filter(sock: socket.socket) -> None:
    """Remove the socket's filter (every packet is accepted again)."""
    sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
