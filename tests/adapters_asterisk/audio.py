"""Test audio in the formats Asterisk writes, made with numpy and PyAV."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt


def tone(freq: float, seconds: float, rate: int = 8000, amp: int = 8000) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def write_wav(path: Path, pcm: npt.NDArray[np.int16], rate: int = 8000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def write_g711(path: Path, pcm: npt.NDArray[np.int16], law: str) -> Path:
    """Raw headerless G.711 (Asterisk's ``ulaw``/``alaw`` formats), encoded by PyAV."""
    codec, fmt = ("pcm_mulaw", "mulaw") if law == "ulaw" else ("pcm_alaw", "alaw")
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=8000, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_gsm_raw(path: Path, frames: int, seed: int = 1) -> Path:
    """Raw GSM 06.10 (``.gsm``): 33-byte frames, each starting with the 0xD signature nibble."""
    rng = np.random.default_rng(seed)
    body = bytearray()
    for _ in range(frames):
        f = bytearray(rng.integers(0, 256, 33, dtype=np.uint8).tobytes())
        f[0] = 0xD0 | (f[0] & 0x0F)
        body += f
    path.write_bytes(bytes(body))
    return path


def write_wav49(path: Path, blocks: int, seed: int = 2) -> Path:
    """WAV49 (Asterisk's ``.WAV``): Microsoft GSM 6.10 in RIFF, 65-byte blocks of 320 samples."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 65 * blocks, dtype=np.uint8).tobytes()
    fmt = struct.pack("<HHIIHHHH", 0x0031, 1, 8000, 1625, 65, 0, 2, 320)
    fact = struct.pack("<I", 320 * blocks)
    chunks = (b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
              + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


def dominant_freq(samples: npt.NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])
