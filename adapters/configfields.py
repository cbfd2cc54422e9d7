"""Validators the adapters' config loaders share: each raises ConfigError naming the key path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from vcon_capture.errors import ConfigError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SECONDS = 10_000_000.0
"""Longest duration a setting may name (~115 days): also refuses infinity and NaN."""


def check_keys(data: Any, path: str, allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(path, "expected a mapping")
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", "unknown key")


def secret(env_name: str, key_path: str, environ: Mapping[str, str] | None) -> str:
    """The secret held by environment variable ``env_name`` (the message never shows a value)."""
    env = os.environ if environ is None else environ
    value = env.get(env_name)
    if not value:
        raise ConfigError(key_path, f"environment variable {env_name} is not set")
    return value


def string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, "expected a non-empty string")
    return value.strip()


def env_name(value: Any, path: str) -> str:
    text = string(value, path)
    if not ENV_NAME.match(text):
        raise ConfigError(path, "expected an environment variable name")
    return text


def boolean(data: Mapping[str, Any], key: str, default: bool, path: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}.{key}", "expected true or false")
    return value


def integer(
    data: Mapping[str, Any], key: str, default: int, path: str, low: int, high: int, *, what: str = ""
) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{path}.{key}", f"expected {what or f'an integer {low}-{high}'}")
    return value


def seconds(data: Mapping[str, Any], key: str, default: float, path: str, *, minimum: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= MAX_SECONDS:
        raise ConfigError(f"{path}.{key}", f"expected a number of seconds >= {minimum:g}")
    return float(value)
