"""Fuzz the YAML config loader (``load_config``: YAML text to a validated ``DaemonConfig``).

Invariant: only ``ConfigError`` escapes (``OSError`` cannot happen: the file is ours).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common
import atheris

with atheris.instrument_imports():
    from vcon_capture.config import load_config
    from vcon_capture.errors import ConfigError

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
_FILE = _DIR / "c.yaml"
os.environ.setdefault("FUZZ_TOKEN", "t0ken")


def TestOneInput(data: bytes) -> None:
    _FILE.write_bytes(data)
    try:
        load_config(_FILE)
    except ConfigError:
        pass


def _seeds() -> list[bytes]:
    out = list(_common.files("config/*.yaml", "tests/**/*.yaml"))
    out.append(b"outputs:\n  - dir: /tmp/x\nfreeswitch:\n  password_env: FUZZ_TOKEN\n")
    out.append(b"outputs: [/tmp/x]\nhttp: {listen: '127.0.0.1:0'}\ncapture: {interfaces: [eth0]}\n")
    return out


if __name__ == "__main__":
    _common.run("config", TestOneInput, _seeds, max_len=4096)
