"""Recording reads: roots and symlinks, every Asterisk format, stereo from r()/t(), ARI download."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from adapters.asterisk import recordings as recs
from tests.adapters_asterisk.audio import (
    dominant_freq,
    tone,
    write_g711,
    write_gsm_raw,
    write_wav,
    write_wav49,
)
from tests.adapters_asterisk.servers import read_wav


def test_roots_symlinks_and_missing(tmp_path: Path) -> None:
    root = tmp_path / "monitor"
    outside = tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    inside = write_wav(root / "a.wav", tone(440, 0.1))
    other = write_wav(outside / "b.wav", tone(440, 0.1))
    (root / "link.wav").symlink_to(other)
    (root / "sub").symlink_to(outside, target_is_directory=True)
    assert recs.resolve_under_roots(str(inside), [str(root)]) == inside.resolve()
    for path, reason in [
        (str(other), "outside-roots"),
        (str(root / "link.wav"), "outside-roots"),
        (str(root / "sub" / "b.wav"), "outside-roots"),
        (str(root / ".." / "secret" / "b.wav"), "outside-roots"),
        (str(root / "nope.wav"), "missing"),
        (str(root), "not-a-file"),
    ]:
        with pytest.raises(recs.RecordingError) as err:
            recs.resolve_under_roots(path, [str(root)])
        assert err.value.reason == reason, path
    with pytest.raises(recs.RecordingError) as err:
        recs.resolve_under_roots(str(inside), [])
    assert err.value.reason == "no-roots"


def test_map_path() -> None:
    pm = [("/var/spool/asterisk", "/mnt/ast")]
    assert recs.map_path("/var/spool/asterisk/monitor/x.wav", pm, "/var/spool/asterisk/monitor") == "/mnt/ast/monitor/x.wav"
    assert recs.map_path("x.wav", pm, "/var/spool/asterisk/monitor") == "/mnt/ast/monitor/x.wav"
    assert recs.map_path("/var/spool/asterisk2/x.wav", pm, "/m") == "/var/spool/asterisk2/x.wav"


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_raw_g711(tmp_path: Path, law: str) -> None:
    src = write_g711(tmp_path / f"x.{law}", tone(440, 1.0), law)
    assert src.stat().st_size == 8000
    pcm, rate = recs.decode_audio(src)
    assert rate == 8000 and pcm.shape == (8000, 1)
    assert abs(dominant_freq(pcm[:, 0], rate) - 440) < 3


def test_slin_gsm_and_wav49(tmp_path: Path) -> None:
    sln = tmp_path / "x.sln16"
    sln.write_bytes(tone(1000, 0.5, 16000).astype("<i2").tobytes())
    pcm, rate = recs.decode_audio(sln)
    assert rate == 16000 and len(pcm) == 8000 and abs(dominant_freq(pcm[:, 0], rate) - 1000) < 3
    gsm = write_gsm_raw(tmp_path / "x.gsm", 50)
    pcm, rate = recs.decode_audio(gsm)
    assert rate == 8000 and len(pcm) == 50 * 160
    wav49 = write_wav49(tmp_path / "x.WAV", 25)
    pcm, rate = recs.decode_audio(wav49)
    assert rate == 8000 and len(pcm) == 25 * 320
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(recs.RecordingError) as err:
        recs.decode_audio(bad)
    assert err.value.reason in ("undecodable", "empty", "no-audio")


@pytest.mark.parametrize("own_first", [True, False])
def test_render_stereo_from_r_and_t(tmp_path: Path, own_first: bool) -> None:
    r = write_g711(tmp_path / "in.ulaw", tone(440, 1.0), "ulaw")
    t = write_g711(tmp_path / "out.ulaw", tone(1000, 0.8), "ulaw")
    out = recs.render(tmp_path / "o.wav", read=r, write=t, own_first=own_first)
    assert out.stereo and out.duration == pytest.approx(1.0)
    channels, rate, frames = read_wav(out.path)
    assert (channels, rate) == (2, 8000)
    pcm = np.frombuffer(frames, dtype="<i2").reshape(-1, 2)
    first, second = (440, 1000) if own_first else (1000, 440)
    assert abs(dominant_freq(pcm[:, 0], rate) - first) < 3
    assert abs(dominant_freq(pcm[:8000 * 8 // 10, 1], rate) - second) < 3


def test_render_two_channel_input_is_reordered(tmp_path: Path) -> None:
    stereo = np.stack([tone(440, 0.5), tone(1000, 0.5)], axis=1).reshape(-1)
    src = write_wav(tmp_path / "d.wav", stereo, channels=2)
    out = recs.render(tmp_path / "o.wav", mix=src, own_first=False)
    channels, rate, frames = read_wav(out.path)
    pcm = np.frombuffer(frames, dtype="<i2").reshape(-1, 2)
    assert channels == 2 and abs(dominant_freq(pcm[:, 0], rate) - 1000) < 3


async def test_wait_complete(tmp_path: Path) -> None:
    path = tmp_path / "grow.wav"
    path.write_bytes(b"x" * 10)
    import asyncio

    loop = asyncio.get_running_loop()
    await recs.wait_complete(path, stopped=False, poll_seconds=0.01, deadline=loop.time() + 5)
    path.write_bytes(b"")
    with pytest.raises(recs.RecordingError) as err:
        await recs.wait_complete(path, stopped=True, poll_seconds=0.01, deadline=loop.time() + 0.05)
    assert err.value.reason == "incomplete"
    os.unlink(path)
    with pytest.raises(recs.RecordingError):
        await recs.wait_complete(path, stopped=True, poll_seconds=0.01, deadline=loop.time() + 1)
