"""Errors shared by the command line, the config loader and the sources."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong; ``path`` names the key (``twilio.auth_token_env``)."""

    def __init__(self, path: str, message: str, *, file: str | None = None) -> None:
        self.path = path
        self.file = file
        self.message = message
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{path}: {message}")
