"""Real calls on loopback: sipp places them, tcpdump captures them.

Used by the integration tests and by ``scripts/make-samples.py``. Every run takes fresh ports so
runs never collide. The caller plays sipp's own ``g711a.pcap`` (PCMA) and then an RFC 2833 digit
(uac_pcap scenario); the callee plays a PCMA tone we generate, so each channel's audio is known.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capture.pcapio import PcapWriter

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP_PCAP_DIR = Path("/usr/share/sip-tester")
CALLEE_TONE_HZ = 1000.0


def tools_available() -> bool:
    return all(shutil.which(t) for t in ("sipp", "tcpdump")) and (SIPP_PCAP_DIR / "g711a.pcap").exists()


def free_udp_ports(n: int, *, step: int = 1) -> list[int]:
    """``n`` UDP ports (each with ``step`` free neighbours) that were free a moment ago."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + step * 16 < 65000 and all(abs(port - p) > 64 for p in ports):
            ports.append(port)
    return ports


def alaw_encode(samples: np.ndarray) -> bytes:
    """G.711 A-law encoder (ITU-T G.711), vectorised."""
    x = np.clip(samples.astype(np.int32), -32768, 32767)
    sign = np.where(x >= 0, 0x80, 0x00)
    mag = np.minimum(np.abs(x), 32767) >> 3  # 13-bit magnitude
    exp = np.zeros_like(mag)
    for e in range(7, 0, -1):
        exp = np.where((exp == 0) & (mag >= (1 << (e + 4))), e, exp)
    mant = np.where(exp == 0, (mag >> 1) & 0x0F, (mag >> exp) & 0x0F)
    code = (sign | (exp << 4) | mant) ^ 0x55
    return bytes(code.astype(np.uint8).tobytes())


def tone(freq: float, seconds: float, rate: int = 8000, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def write_rtp_pcap(path: Path, payloads: Sequence[bytes], *, payload_type: int = 8, ptime: float = 0.02,
                   ssrc: int = 0x1234ABCD, samples_per_packet: int = 160) -> None:
    """An Ethernet/IPv4/UDP pcap of RTP packets, as sipp's play_pcap_audio wants."""
    with open(path, "wb") as fh:
        w = PcapWriter(fh, linktype=1)
        for i, payload in enumerate(payloads):
            rtp = struct.pack("!BBHII", 0x80, payload_type | (0x80 if i == 0 else 0), i & 0xFFFF,
                              (i * samples_per_packet) & 0xFFFFFFFF, ssrc) + payload
            udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
            frame = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb" + b"\x08\x00" + ip
            w.write(1_000_000_000.0 + i * ptime, frame)


def make_callee_pcap(path: Path, seconds: float = 7.0) -> bytes:
    """The callee's audio: a 1 kHz PCMA tone; returns the A-law bytes played."""
    alaw = alaw_encode(tone(CALLEE_TONE_HZ, seconds))
    write_rtp_pcap(path, [alaw[i : i + 160] for i in range(0, len(alaw), 160)])
    return alaw


@dataclass
class SippRun:
    """One batch of calls: what to run and where."""

    uac_scenario: str  # built-in name ("uac_pcap") or XML file under SCENARIOS
    uas_scenario: str
    calls: int = 1
    concurrent: int = 1
    rate: float = 10.0
    transport: str = "u1"  # sipp -t: u1 (UDP) or t1 (TCP)
    uas_media_port_keyword: str = "[auto_media_port]"


class SippError(RuntimeError):
    pass


@contextmanager
def tcpdump_capture(path: Path, *, filter_expr: str = "udp or tcp") -> Iterator[None]:
    """Capture loopback into ``path`` while the body runs."""
    proc = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-s", "0", "-n", "-w", str(path), filter_expr],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    line = b""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if b"listening on" in line or not line:
            break
    try:
        yield
    finally:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _scenario_args(name: str, workdir: Path, media_keyword: str) -> list[str]:
    if name.endswith(".xml"):
        text = (SCENARIOS / name).read_text().replace("[auto_media_port]", media_keyword)
        target = workdir / name
        target.write_text(text)
        return ["-sf", str(target)]
    return ["-sn", name]


def port_block(span: int = 4000) -> int:
    """The base of ``span`` consecutive ports, chosen at random in 10000-31999 and checked free at a
    few points, so one capture can be filtered to its own calls (other tests may share loopback)."""
    import random

    for _ in range(200):
        base = random.randrange(10000, 32000 - span, 16)
        try:
            for port in (base, base + 1, base + 16, base + span // 2, base + span - 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SippError("no free port block")


def run_calls(run: SippRun, workdir: Path, *, timeout: float = 90.0, base: int | None = None) -> None:
    """Start a sipp UAS, place the calls with a sipp UAC, wait for both to finish.

    With ``base`` every port of the run lies in ``base .. base + 3999`` (SIP at base and base+1, the
    callee's media from base+16, the caller's from base+2000); otherwise ports are picked free.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pcap").mkdir(exist_ok=True)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        src = SIPP_PCAP_DIR / name
        if src.exists() and not (workdir / "pcap" / name).exists():
            shutil.copy(src, workdir / "pcap" / name)
    if not (workdir / "callee.pcap").exists():
        make_callee_pcap(workdir / "callee.pcap")
    if base is not None:
        sip_uas, sip_uac, media_uas, media_uac = base, base + 1, base + 16, base + 2000
    else:
        sip_uas, sip_uac, media_uas, media_uac = free_udp_ports(4, step=4)
    common = ["-i", "127.0.0.1", "-t", run.transport, "-nostdin", "-trace_err"]
    uas = subprocess.Popen(
        ["sipp", *_scenario_args(run.uas_scenario, workdir, run.uas_media_port_keyword), *common,
         "-p", str(sip_uas), "-mi", "127.0.0.1", "-mp", str(media_uas), "-m", str(run.calls)],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(0.3)
    uac = subprocess.Popen(
        ["sipp", *_scenario_args(run.uac_scenario, workdir, "[media_port]"), *common,
         "-p", str(sip_uac), "-mi", "127.0.0.1", "-mp", str(media_uac),
         "-m", str(run.calls), "-l", str(run.concurrent), "-r", str(run.rate),
         f"127.0.0.1:{sip_uas}"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        uac.wait(timeout=timeout)
        uas.wait(timeout=15)
    except subprocess.TimeoutExpired as exc:
        raise SippError(f"sipp did not finish: {exc}") from exc
    finally:
        for p in (uac, uas):
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stderr is not None:
                p.stderr.close()


def capture_calls(runs: Sequence[SippRun], pcap_path: Path, workdir: Path) -> Path:
    """Run the batches one after the other while tcpdump captures loopback."""
    transports = {r.transport for r in runs}
    proto = "udp" if transports == {"u1"} else "(udp or tcp)"
    bases = [port_block() for _ in runs]
    ranges = " or ".join(f"portrange {b}-{b + 3999}" for b in bases)
    with tcpdump_capture(pcap_path, filter_expr=f"{proto} and ({ranges})"):
        for i, (run, base) in enumerate(zip(runs, bases, strict=True)):
            run_calls(run, workdir / f"run{i}", base=base)
    return pcap_path


def decode_alaw(data: bytes) -> np.ndarray:
    """Reference A-law decoder (ITU-T G.711) for checking audio."""
    a = np.frombuffer(data, dtype=np.uint8) ^ 0x55
    sign = a & 0x80
    exp = (a >> 4) & 0x07
    mant = (a & 0x0F).astype(np.int32)
    mag = np.where(exp == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << (exp - 1))
    return np.where(sign != 0, mag, -mag).astype(np.int16)


def sipp_caller_audio() -> np.ndarray:
    """PCM of what sipp's uac_pcap plays (the payloads of g711a.pcap, decoded)."""
    from capture.netlayers import PacketDecoder
    from capture.pcapio import open_capture

    decoder = PacketDecoder()
    out = []
    with open_capture(SIPP_PCAP_DIR / "g711a.pcap") as reader:
        for ts, lt, frame in reader:
            dg = decoder.decode(ts, lt, frame)
            if dg is not None and len(dg.payload) > 12:
                out.append(dg.payload[12:])
    return decode_alaw(b"".join(out))


def env_ok() -> bool:
    return os.geteuid() == 0 and tools_available()
