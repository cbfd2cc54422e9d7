"""Default locations (standard library only: the CLI reads them while building its parser)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_spool_dir"]


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/vcon-capture/outbox``, else ``~/.local/state/vcon-capture/outbox``."""
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "vcon-capture" / "outbox"
