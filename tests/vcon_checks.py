"""Helpers for tests that look at vCons: schema validation, loading, WAV decoding."""

from __future__ import annotations

import io
import json
import wave
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from tests.conftest import SCHEMA_PATH


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def validate_vcon(vcon: dict[str, Any]) -> None:
    """Schema-valid, plus the vcon-notes rules the schema cannot say."""
    errors = sorted(_validator().iter_errors(vcon), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    assert vcon["vcon"] == "0.4.0"
    for forbidden in ("group", "meta", "mimetype"):
        assert forbidden not in vcon
    assert vcon.get("redacted", None) != {}
    n_parties = len(vcon.get("parties", []))
    n_dialogs = len(vcon.get("dialog", []))
    for d in vcon.get("dialog", []):
        assert "mimetype" not in d
        if d.get("encoding") == "base64url":
            assert "=" not in d["body"]
        if "url" in d:
            assert str(d["content_hash"]).startswith("sha512-")
        parties = d.get("parties")
        flat = parties if isinstance(parties, list) else [parties] if parties is not None else []
        for p in flat:
            assert p is None or (isinstance(p, int) and 0 <= p < n_parties)
        for h in d.get("party_history", []):
            assert 0 <= h["party"] < n_parties
        for key in ("original", "consultation", "target_dialog"):
            if key in d:
                assert 0 <= d[key] < n_dialogs
    for a in vcon.get("analysis", []):
        assert a["vendor"]
    for a in vcon.get("attachments", []):
        assert 0 <= a["party"] < max(n_parties, 1) and 0 <= a["dialog"] < max(n_dialogs, 1)


def load_vcons(directory: Path) -> list[dict[str, Any]]:
    """Every ``<uuid>.vcon.json`` in ``directory``; the file name must be the vCon's uuid."""
    out = []
    for path in sorted(directory.glob("*.vcon.json")):
        vcon = json.loads(path.read_text())
        assert path.name == f"{vcon['uuid']}.vcon.json"
        out.append(vcon)
    return out


def wav_channels(data: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """(rate, channel 0, channel 1) of a stereo s16 WAV."""
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        rate = w.getframerate()
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return rate, frames[:, 0].copy(), frames[:, 1].copy()
