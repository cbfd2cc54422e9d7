"""LiveSource on loopback: frames, filter, link types, counters, the reader thread (issue 6)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capture.bpf import DLT_RAW, FilterError, compile_filter
from capture.live import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    Batch,
    CaptureThread,
    LiveCapture,
    LiveCaptureError,
    LiveSource,
    open_sources,
)
from capture.netlayers import PacketDecoder
from tests.live.support import af_packet_reason, free_udp_port, read_until, send_udp

REPO = Path(__file__).resolve().parents[2]
NO_CAPTURE = af_packet_reason()
needs_capture = pytest.mark.skipif(NO_CAPTURE is not None, reason=NO_CAPTURE or "")


# -- filter compilation (no privileges needed) ------------------------------------------------------


def _tcpdump_dd(expr: str, *extra: str) -> list[tuple[int, int, int, int]]:
    proc = subprocess.run(["tcpdump", *extra, "-dd", expr], capture_output=True, text=True, check=True)
    out = []
    for line in proc.stdout.splitlines():
        fields = [int(x, 0) for x in line.strip().strip("{},").replace("}", "").split(",") if x.strip()]
        if fields:
            code, jt, jf, k = fields
            out.append((code, jt, jf, k))
    return out


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
@pytest.mark.parametrize(
    "expr",
    [
        "udp and port 5060",
        "udp",
        "host 10.0.0.1 and (udp portrange 10000-20000 or tcp port 5061)",
        "ip6 and udp dst port 5080",
        "(udp and (port 5060 or portrange 16384-32767)) or (tcp and port 5060)",
        "",
    ],
)
def test_compile_filter_matches_tcpdump(expr: str) -> None:
    assert compile_filter(expr) == _tcpdump_dd(expr)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_compile_filter_for_raw_ip_matches_tcpdump() -> None:
    assert compile_filter("udp port 5060", DLT_RAW) == _tcpdump_dd("udp port 5060", "-y", "RAW")


def test_compile_filter_snaplen_is_the_accept_value() -> None:
    assert compile_filter("udp", snaplen=1500)[-2:] == [(6, 0, 0, 1500), (6, 0, 0, 0)]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("udp and", "can't parse filter expression: syntax error"),
        ("port 99999", "illegal port number 99999 > 65535"),
        ("udp prot 5060", "can't parse filter expression: syntax error"),
    ],
)
def test_bad_filter_raises_with_libpcaps_message(expr: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expr)
    assert info.value.message == message
    assert info.value.expr == expr
    assert message in str(info.value)


# -- argument checks -------------------------------------------------------------------------------


def test_block_size_must_be_whole_pages() -> None:
    with pytest.raises(ValueError, match="page size"):
        LiveSource("lo", block_kb=3)
    with pytest.raises(ValueError, match="at least one block"):
        LiveSource("lo", ring_mb=1, block_kb=4096)


def test_read_before_open_is_an_error() -> None:
    with pytest.raises(LiveCaptureError, match="not open"):
        LiveSource("lo").read_batch(0)


@needs_capture
def test_unknown_interface() -> None:
    with pytest.raises(LiveCaptureError, match="no such network interface: 'nosuch0'"):
        LiveSource("nosuch0").open()


@needs_capture
def test_bad_filter_when_opening_leaves_nothing_open() -> None:
    src = LiveSource("lo", bpf="udp and")
    with pytest.raises(FilterError):
        src.open()
    assert src.closed


@pytest.mark.skipif(shutil.which("setpriv") is None or NO_CAPTURE is not None,
                    reason="needs setpriv and CAP_NET_RAW to drop")
def test_without_cap_net_raw_the_error_says_what_is_missing() -> None:
    code = (
        "from capture.live import LiveSource, LiveCaptureError\n"
        "try:\n    LiveSource('lo').open()\nexcept LiveCaptureError as e:\n    print(e)\n"
    )
    # Dropping the capability from the bounding set removes it from the exec'd interpreter.
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=REPO, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cannot open an AF_PACKET socket on 'lo'" in proc.stdout
    assert "CAP_NET_RAW" in proc.stdout
    assert "--cap-add NET_RAW" in proc.stdout and "setcap cap_net_raw,cap_net_admin+eip" in proc.stdout


# -- frames on loopback ----------------------------------------------------------------------------


@needs_capture
def test_loopback_udp_frames_payloads_timestamps_and_kernel_filter() -> None:
    port = free_udp_port()
    other = free_udp_port()
    payloads = [f"datagram {i:03d}".encode() * (i % 5 + 1) for i in range(50)]
    with LiveSource("lo", bpf=f"udp and port {port}", ring_mb=4, block_kb=256) as src:
        assert src.linktype == LINKTYPE_ETHERNET
        before = time.time()
        send_udp(other, [b"not for us"] * 5)
        send_udp(port, payloads)
        after = time.time()
        got = read_until(src, len(payloads), settle=0.3)
        stats = src.stats()
    # Each datagram once (lo's outgoing copy is not delivered), in order, nothing else.
    assert len(got) == len(payloads)
    decoder = PacketDecoder()
    for (ts, linktype, frame), payload in zip(got, payloads, strict=True):
        assert linktype == LINKTYPE_ETHERNET
        assert before - 0.01 <= ts <= after + 0.01
        assert frame[:12] == bytes(12)  # lo carries zeroed MAC addresses
        dg = decoder.decode(ts, linktype, frame)
        assert dg is not None
        assert (dg.proto, dg.dst, dg.dport, dg.payload) == (17, "127.0.0.1", port, payload)
    assert [ts for ts, _, _ in got] == sorted(ts for ts, _, _ in got)
    assert stats.frames == len(payloads) and stats.packets == len(payloads)
    assert stats.kernel_drops == 0 and stats.blocks >= 1


@needs_capture
def test_idle_read_returns_an_empty_batch_after_the_timeout() -> None:
    with LiveSource("lo", bpf=f"udp and port {free_udp_port()}", ring_mb=1, block_kb=64) as src:
        t0 = time.monotonic()
        assert src.read_batch(0.2) == []
        assert 0.15 <= time.monotonic() - t0 < 1.0
        assert src.read_batch(0) == []


@needs_capture
def test_any_interface_gives_cooked_frames_once_each() -> None:
    port = free_udp_port()
    with LiveSource("any", bpf=f"udp and port {port}", ring_mb=4, block_kb=256) as src:
        assert src.linktype == LINKTYPE_LINUX_SLL
        send_udp(port, [b"a", b"bb", b"ccc"])
        got = read_until(src, 3, settle=0.3)
    assert len(got) == 3
    decoder = PacketDecoder()
    for (ts, linktype, frame), payload in zip(got, [b"a", b"bb", b"ccc"], strict=True):
        # LINKTYPE_LINUX_SLL: packet type 0 (to us), ARPHRD_LOOPBACK, 6-byte address, IPv4.
        assert frame[:6] == bytes.fromhex("0000 0304 0006") and frame[14:16] == b"\x08\x00"
        dg = decoder.decode(ts, linktype, frame)
        assert dg is not None and dg.payload == payload and dg.dport == port


@needs_capture
def test_lo_outgoing_copies_are_skipped_when_the_kernel_cannot_drop_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PACKET_IGNORE_OUTGOING each lo packet comes twice; the walk must drop the copy."""
    from capture import live

    monkeypatch.setattr(live, "PACKET_IGNORE_OUTGOING", 0x7FFF)  # an option no kernel knows
    port = free_udp_port()
    with LiveSource("lo", bpf=f"udp and port {port}", ring_mb=1, block_kb=64) as src:
        send_udp(port, [b"1", b"2"])
        got = read_until(src, 2, settle=0.3)
        stats = src.stats()
    assert [f[-1:] for _, _, f in got] == [b"1", b"2"]
    assert stats.packets == 4  # the kernel delivered both copies of each


@needs_capture
def test_batches_span_blocks_in_ring_order() -> None:
    """Many small blocks and a ring that wraps several times: every frame once, in order."""
    port = free_udp_port()
    n = 12000
    with LiveSource("lo", bpf=f"udp and port {port}", ring_mb=1, block_kb=8, batch_blocks=2) as src:
        got: Batch = []
        for start in range(0, n, 500):
            send_udp(port, [i.to_bytes(4, "big") for i in range(start, start + 500)])
            got += read_until(src, start + 500 - len(got), deadline=2.0)
        got += read_until(src, n - len(got), settle=0.2)
        stats = src.stats()
    assert stats.kernel_drops == 0
    assert [int.from_bytes(f[-4:], "big") for _, _, f in got] == list(range(n))
    assert stats.blocks > src.block_nr == 128  # the ring wrapped


@needs_capture
def test_open_sources_is_all_or_nothing() -> None:
    with pytest.raises(LiveCaptureError):
        open_sources(["lo", "nosuch0"], "udp", ring_mb=1, block_kb=64)
    sources = open_sources(["lo", "any"], "udp", ring_mb=1, block_kb=64)
    try:
        assert [s.linktype for s in sources] == [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL]
    finally:
        for s in sources:
            s.close()
    assert all(s.closed for s in sources)


# -- the reader thread -----------------------------------------------------------------------------


@needs_capture
def test_live_capture_thread_delivers_and_stops_promptly() -> None:
    port = free_udp_port()
    with LiveCapture(["lo"], f"udp and port {port}", ring_mb=2, block_kb=64, retire_ms=10) as cap:
        send_udp(port, [b"x%d" % i for i in range(20)])
        got: Batch = []
        end = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < end:
            got += cap.get(0.1)
        assert cap.get(0.05) == []  # idle tick
        t0 = time.monotonic()
        assert cap.stop(timeout=2.0)
        assert time.monotonic() - t0 < 1.0
    assert [f[-2:] for _, _, f in got[:3]] == [b"x0", b"x1", b"x2"]
    assert len(got) == 20 and cap.own_drops == 0
    assert all(s.closed for s in cap.sources)
    assert not any(t.alive for t in cap.threads)


@needs_capture
def test_a_full_queue_drops_whole_batches_and_counts_them() -> None:
    port = free_udp_port()
    out: queue.Queue[Batch] = queue.Queue(maxsize=1)
    with LiveSource("lo", bpf=f"udp and port {port}", ring_mb=1, block_kb=64, retire_ms=5) as src:
        reader = CaptureThread(src, out)
        reader.start()
        for burst in range(4):
            send_udp(port, [b"%d" % burst] * 10)
            time.sleep(0.2)  # later bursts go into later blocks, so later batches
        assert reader.stop()
    queued = out.get_nowait()
    assert out.empty() and reader.batches == 1 and reader.error is None
    assert queued[0][2][-1:] == b"0"
    assert reader.own_drops >= 30 and reader.own_drops + len(queued) == 40


@needs_capture
def test_reader_error_surfaces_from_get() -> None:
    port = free_udp_port()
    cap = LiveCapture(["lo"], f"udp and port {port}", ring_mb=1, block_kb=64)
    try:
        cap.sources[0].close()  # the reader's next read fails
        cap.start()
        time.sleep(0.2)
        with pytest.raises(LiveCaptureError, match="capture on 'lo' failed"):
            cap.get(0.05)
    finally:
        cap.stop()



# -- a real Ethernet link: both directions, VLAN tags ------------------------------------------------


def _netns_reason() -> str | None:
    if NO_CAPTURE is not None:
        return NO_CAPTURE
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "--net", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot make a veth pair in a new network namespace: {probe.stderr.strip()}"
    return None


def test_veth_pair_sees_outgoing_and_incoming_once_and_restores_vlan_tags() -> None:
    reason = _netns_reason()
    if reason is not None:
        pytest.skip(reason)
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.live.netns_veth"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # The sender's copy (PACKET_OUTGOING) and the receiver's copy are each exactly what was sent;
    # on veth1 the kernel had moved the 802.1Q tag into metadata and LiveSource put it back.
    assert out["tx"] == out["sent"]
    assert out["rx"] == out["sent"]
    assert bytes.fromhex(out["rx"][1][0])[12:16] == bytes.fromhex("8100 0064")
