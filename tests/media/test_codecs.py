"""Payload decoders: G.711 tables, corpus payloads, and tones through PyAV encoders."""

from __future__ import annotations

import time
from collections.abc import Iterator

import av
import numpy as np
import numpy.typing as npt
import pytest

from capture.codecs import (
    ALAW_TABLE,
    CODEC_AUDIO_RATE,
    ULAW_TABLE,
    CodecError,
    Decoder,
    amr_storage_frames,
    audio_rate,
    decode_g711,
    get_decoder,
    parse_fmtp,
)
from capture.rtp import RtpPacket
from tests.media import load_datagrams

Samples = npt.NDArray[np.int16]


def _ulaw_reference(code: int) -> int:
    """ITU-T G.711 µ-law expansion, written out as in the reference g711.c."""
    code = ~code & 0xFF
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def _alaw_reference(code: int) -> int:
    """ITU-T G.711 A-law expansion, written out as in the reference g711.c."""
    code ^= 0x55
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = (mantissa << 4) + 8
    if exponent:
        magnitude = (magnitude + 0x100) << (exponent - 1)
    return magnitude if sign else -magnitude


def _ffmpeg_decode(codec: str, data: bytes) -> Samples:
    context = av.CodecContext.create(codec, "r")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = 8000
    context.layout = "mono"
    frames = context.decode(av.Packet(data))
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.int16)


def test_g711_tables_match_itu_formula_and_ffmpeg() -> None:
    assert ULAW_TABLE.tolist() == [_ulaw_reference(code) for code in range(256)]
    assert ALAW_TABLE.tolist() == [_alaw_reference(code) for code in range(256)]
    every_code = bytes(range(256))
    assert np.array_equal(_ffmpeg_decode("pcm_mulaw", every_code), ULAW_TABLE)
    assert np.array_equal(_ffmpeg_decode("pcm_alaw", every_code), ALAW_TABLE)
    assert ULAW_TABLE[0xFF] == 0 and ULAW_TABLE[0x00] == -32124
    assert ALAW_TABLE[0xD5] == 8 and ALAW_TABLE[0x55] == -8


def test_decode_g711_is_one_fast_index() -> None:
    data = np.random.default_rng(1).integers(0, 256, 8_000_000, dtype=np.uint8).tobytes()  # 1000 s
    started = time.perf_counter()
    pcm = decode_g711(data, "PCMA")
    elapsed = time.perf_counter() - started
    assert len(pcm) == 2 * len(data)
    assert np.array_equal(np.frombuffer(pcm, "<i2")[:256], ALAW_TABLE[np.frombuffer(data[:256], np.uint8)])
    assert decode_g711(b"\xff\x7f", "ulaw") == b"\x00\x00\x00\x00"
    assert elapsed < 0.5


def _rms(samples: Samples) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def _payloads(name: str) -> list[bytes]:
    return [RtpPacket.parse(d.payload).payload for d in load_datagrams(name)]


def _decode_all(decoder: Decoder, payloads: list[bytes]) -> list[Samples]:
    return [np.frombuffer(decoder.decode(payload), "<i2") for payload in payloads]


@pytest.mark.parametrize(
    ("fixture", "encoding", "clock", "channels", "fmtp", "rate", "samples_per_packet"),
    [
        ("sipp_g711a.tsv", "PCMA", 8000, 1, None, 8000, 240),
        ("g722.tsv", "G722", 8000, 1, None, 16000, 320),
        ("g729a.tsv", "G729", 8000, 1, None, 8000, 160),
        ("g729a.tsv", "g729a", 8000, 1, None, 8000, 160),
        ("ilbc.tsv", "iLBC", 8000, 1, "mode=30", 8000, 240),
        ("ilbc.tsv", "iLBC", 8000, 1, None, 8000, 240),
        ("opus99.tsv", "opus", 48000, 2, "useinbandfec=1", 48000, 960),
        ("opus107.tsv", "OPUS", 48000, 2, None, 48000, 960),
    ],
)
def test_corpus_payloads_decode(
    fixture: str, encoding: str, clock: int, channels: int, fmtp: str | None, rate: int,
    samples_per_packet: int,
) -> None:
    decoder = get_decoder(encoding, clock, channels, fmtp)
    assert decoder is not None
    assert decoder.sample_rate == rate == audio_rate(encoding, clock)
    assert decoder.clock_rate == clock
    decoded = _decode_all(decoder, _payloads(fixture))
    lengths = [len(samples) for samples in decoded]
    # Opus's first packet loses the decoder's pre-skip.
    assert all(length == samples_per_packet for length in lengths[1:])
    assert samples_per_packet - 64 <= lengths[0] <= samples_per_packet
    assert _rms(np.concatenate(decoded)) > 100.0


def test_g722_clock_is_half_the_audio_rate() -> None:
    payloads = _payloads("g722.tsv")
    packets = [RtpPacket.parse(d.payload) for d in load_datagrams("g722.tsv")]
    assert packets[1].timestamp - packets[0].timestamp == 160  # 20 ms at the 8000 Hz RTP clock
    decoder = get_decoder("G722", 8000)
    assert decoder is not None
    assert len(decoder.decode(payloads[0])) // 2 == 320  # 20 ms at 16 kHz


def _tone(frequency: float, rate: int, seconds: float, amplitude: float = 8000.0) -> Samples:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def _encode(codec: str, samples: Samples, rate: int, frame: int, bit_rate: int = 0) -> Iterator[bytes]:
    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = rate
    context.layout = "mono"
    context.format = "s16"
    if bit_rate:
        context.bit_rate = bit_rate
    for start in range(0, len(samples) - frame + 1, frame):
        audio = av.AudioFrame.from_ndarray(samples[None, start : start + frame], format="s16", layout="mono")
        audio.sample_rate = rate
        audio.pts = start
        for packet in context.encode(audio):
            yield bytes(packet)


def _dominant_frequency(samples: Samples, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(
    ("encoder", "encoding", "clock", "rate", "frame"),
    [
        ("pcm_mulaw", "PCMU", 8000, 8000, 160),
        ("pcm_alaw", "PCMA", 8000, 8000, 160),
        ("g722", "G722", 8000, 16000, 320),
        ("libopus", "opus", 48000, 48000, 960),
    ],
)
def test_tone_survives_encode_decode(encoder: str, encoding: str, clock: int, rate: int, frame: int) -> None:
    tone = _tone(1000.0, rate, 1.0)
    decoder = get_decoder(encoding, clock, 2 if encoding == "opus" else 1)
    assert decoder is not None
    pcm = np.concatenate(_decode_all(decoder, list(_encode(encoder, tone, rate, frame))))
    assert len(pcm) >= len(tone) - 2 * frame
    steady = pcm[frame * 5 : frame * 45]
    assert abs(_dominant_frequency(steady, rate) - 1000.0) < 5.0
    assert _rms(steady) > 3000.0


def _amr_frames(samples: Samples) -> list[bytes]:
    """AMR-NB 12.2 storage-format frames (TOC byte + 31 speech bytes) from libopencore."""
    return list(_encode("libopencore_amrnb", samples, 8000, 160, bit_rate=12200))


def _amr_octet_aligned(frames: list[bytes]) -> bytes:
    """RFC 4867 §4.4: CMR byte, TOC bytes with F set on all but the last, then the speech bytes."""
    tocs = bytes((frame[0] & 0x7C) | (0x80 if i < len(frames) - 1 else 0) for i, frame in enumerate(frames))
    return b"\xf0" + tocs + b"".join(frame[1:] for frame in frames)


def _amr_bandwidth_efficient(frames: list[bytes]) -> bytes:
    """RFC 4867 §4.3: 4-bit CMR, 6-bit TOCs, then 244 speech bits per 12.2 frame, zero-padded."""
    bits = "1111"
    for i, frame in enumerate(frames):
        frame_type, quality = (frame[0] >> 3) & 0x0F, (frame[0] >> 2) & 1
        bits += ("1" if i < len(frames) - 1 else "0") + format(frame_type, "04b") + str(quality)
    for frame in frames:
        bits += "".join(format(byte, "08b") for byte in frame[1:])[:244]
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


@pytest.mark.parametrize("octet_aligned", [True, False])
def test_amr_rfc4867_payloads_decode_to_the_tone(octet_aligned: bool) -> None:
    frames = _amr_frames(_tone(700.0, 8000, 1.0))
    assert {frame[0] for frame in frames} == {0x3C}  # FT 7 (12.2 kbit/s), Q=1, 32 bytes
    pack = _amr_octet_aligned if octet_aligned else _amr_bandwidth_efficient
    payloads = [pack(frames[i : i + 2]) for i in range(0, len(frames) - 1, 2)]  # 2 frames per packet
    fmtp = "octet-align=1; mode-set=7" if octet_aligned else "mode-set=7"
    for payload in payloads[:3]:
        rebuilt = [frame for _, frame in amr_storage_frames(payload, octet_aligned=octet_aligned)]
        assert all(isinstance(frame, bytes) for frame in rebuilt)
    decoder = get_decoder("AMR", 8000, 1, fmtp)
    assert decoder is not None
    pcm = np.concatenate(_decode_all(decoder, payloads))
    assert len(pcm) == 320 * len(payloads)
    assert abs(_dominant_frequency(pcm[1600:7200], 8000) - 700.0) < 10.0


def test_amr_storage_frames_match_the_encoder_output() -> None:
    frames = _amr_frames(_tone(500.0, 8000, 0.2))[:3]
    for pack, octet_aligned in ((_amr_octet_aligned, True), (_amr_bandwidth_efficient, False)):
        rebuilt = [frame for _, frame in amr_storage_frames(pack(frames), octet_aligned=octet_aligned)]
        assert all(isinstance(frame, bytes) for frame in rebuilt)
        # The 12.2 frame is 244 bits: the encoder's last byte has 4 padding bits we reproduce as zero.
        assert [bytes(frame)[:-1] for frame in rebuilt if isinstance(frame, bytes)] == [
            frame[:-1] for frame in frames
        ]


def test_amr_sid_no_data_and_truncation() -> None:
    # CMR, TOC: F=1 FT=15 (NO_DATA), then F=0 FT=8 (SID, 5 bytes).
    payload = bytes([0xF0, 0x80 | (15 << 3), 8 << 3]) + bytes(5)
    assert list(amr_storage_frames(payload, octet_aligned=True)) == [(3, 160), (3, 160)]
    decoder = get_decoder("AMR", 8000, 1, "octet-align=1")
    assert decoder is not None
    assert decoder.decode(payload) == bytes(640)
    with pytest.raises(CodecError):
        decoder.decode(payload[:5])
    with pytest.raises(CodecError):
        decoder.decode(bytes([0xF0, 0x80]))  # TOC never ends
    with pytest.raises(CodecError):
        decoder.decode(bytes([0xF0, 12 << 3]))  # reserved frame type


def test_g729_sid_frame_is_silence() -> None:
    payloads = _payloads("g729a.tsv")
    decoder = get_decoder("G729", 8000)
    assert decoder is not None
    pcm = decoder.decode(payloads[10] + b"\x12\x34")  # two speech frames + an Annex B SID
    assert len(pcm) == 2 * 240
    assert pcm[320:] == bytes(160)


def test_other_decoders() -> None:
    cn = get_decoder("CN", 8000)
    assert cn is not None and cn.decode(b"\x40") == bytes(320)
    l16 = get_decoder("L16", 16000, 2)
    assert l16 is not None and l16.sample_rate == 16000
    stereo = np.array([[1000, 3000], [-2000, -4000]], dtype=">i2").tobytes()
    assert np.frombuffer(l16.decode(stereo), "<i2").tolist() == [2000, -3000]
    gsm = get_decoder("GSM", 8000)
    assert gsm is not None
    assert len(gsm.decode((bytes([0xD8]) + bytes(range(32))) * 2)) == 2 * 320
    assert get_decoder("speex", 8000) is not None
    assert get_decoder("G723", 8000) is not None
    assert get_decoder("telephone-event", 8000) is None
    assert get_decoder("FOO", 8000) is None
    assert get_decoder("PCMU", 0) is None


def test_rates_and_fmtp() -> None:
    assert CODEC_AUDIO_RATE["G722"] == 16000
    assert audio_rate("opus", 48000) == 48000
    assert audio_rate("L16", 44100) == 44100
    assert audio_rate("pcmu", 8000) == 8000
    assert parse_fmtp("mode=30; octet-align=1;;") == {"mode": "30", "octet-align": "1"}
    assert parse_fmtp(None) == {}


def test_g711_decoders_do_not_load_pyav() -> None:
    """PyAV takes ~0.1 s to import: calls that are all G.711 (or CN, L16) never load it."""
    import subprocess
    import sys

    script = ("import sys\nfrom capture.codecs import get_decoder\n"
              "assert get_decoder('PCMU', 8000) and get_decoder('PCMA', 8000) and get_decoder('CN', 8000)\n"
              "print('av' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "False"


def test_a_codec_ffmpeg_cannot_open_has_no_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from capture import codecs

    def refused(clock: int, channels: int, fmtp: str | None) -> None:
        raise av.error.InvalidDataError(1094995529, "codec refused")

    def broken(clock: int, channels: int, fmtp: str | None) -> None:
        raise RuntimeError("a bug, not a codec")

    monkeypatch.setitem(codecs._FACTORIES, "G722", refused)
    assert get_decoder("G722", 8000) is None
    monkeypatch.setitem(codecs._FACTORIES, "G722", broken)
    with pytest.raises(RuntimeError):
        get_decoder("G722", 8000)
