"""Config errors name the file, the key path and what was expected (issue 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from vcon_capture.config import load_config
from vcon_capture.errors import ConfigError

EXAMPLE = REPO_ROOT / "config" / "vcon-capture.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_example_config_is_valid_and_documented() -> None:
    config = load_config(EXAMPLE)
    assert config.capture.interfaces == ("eth0",)
    assert config.capture.filter == "udp or tcp"
    assert config.capture.watch == Path("/var/spool/pcaps")
    assert config.spool == Path("/var/lib/vcon-capture/outbox")
    assert config.http.host_port == ("127.0.0.1", 8080)
    assert len(config.outputs) == 2
    assert config.capture.timeouts.rtp_idle == 300 and config.capture.timeouts.max_call == 14400


def test_issue_example_keys_work(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
capture:
  interfaces: [eth0]
  filter: "udp or tcp"
  watch: /var/spool/pcaps
outputs:
  - /var/lib/vcon-capture/vcons
  - url: http://127.0.0.1:8000/api/vcon?ingress_lists=default
    token_env: CONSERVER_TOKEN
spool: /var/lib/vcon-capture/outbox
http:
  listen: 127.0.0.1:8080
"""))
    assert config.capture.watch_done == Path("/var/spool/pcaps/done")


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("outputs: [/tmp/x]\ncapture:\n  interfacez: [eth0]\n", "capture", "interfacez"),
        ("outputs: [/tmp/x]\ncapture:\n  ring_mb: lots\n", "capture.ring_mb", "integer"),
        ("outputs: [/tmp/x]\ncapture:\n  timeouts:\n    rtp_idle: -5\n", "capture.timeouts.rtp_idle", "number"),
        ("outputs: [/tmp/x]\nhttp:\n  listen: localhost\n", "http.listen", "host:port"),
        ("outputs: [/tmp/x]\ncapture:\n  watch_action: shred\n", "capture.watch_action", "move or delete"),
        ("capture: {}\n", "outputs", "at least one"),
        ("outputs:\n  - url: http://h/api/vcon\n    token: abc\n", "outputs[0]", "token_env"),
        ("outputs: [ftp://nowhere]\n", "outputs[0]", ""),
        ("outputs: [/tmp/x]\nlog:\n  level: loud\n", "log.level", "debug"),
        ("outputs: [/tmp/x]\nbogus: 1\n", "(top level)", "bogus"),
        ("outputs: [/tmp/x]\ncapture: [1, 2]\n", "capture", "mapping"),
    ],
)
def test_wrong_key_or_value_names_it(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.path == path
    assert str(f) in str(info.value)
    assert fragment in str(info.value)


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "outputs: [/tmp/x\ncapture: {\n"))
    assert "line" in str(info.value)


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "vcon_capture.cli", "check-config", str(EXAMPLE)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = write(tmp_path, "outputs: [/tmp/x]\ncapture:\n  ring_mb: lots\n")
    proc = subprocess.run([sys.executable, "-m", "vcon_capture.cli", "check-config", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert f"{bad}: capture.ring_mb: expected an integer" in proc.stderr


def test_run_with_bad_config_stops_before_starting(tmp_path: Path) -> None:
    bad = write(tmp_path, "outputs: [/tmp/x]\nnonsense: true\n")
    proc = subprocess.run([sys.executable, "-m", "vcon_capture.cli", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "nonsense" in proc.stderr


def test_leg_linking_keys_reach_the_engine(tmp_path: Path) -> None:
    from vcon_capture.daemon import engine_options

    config = load_config(write(tmp_path, """
outputs: [/tmp/x]
capture:
  link_legs: false
  correlation_headers: [X-Leg-Id]
  transfer_wait: 5
  timeouts: {rtp_idle: 60, max_call: 600}
"""))
    options = engine_options(config)
    assert options.link_legs is False and options.correlation_headers == ("X-Leg-Id",)
    assert options.transfer_wait == 5.0
    assert options.calls.rtp_idle_timeout == 60.0 and options.calls.max_call_duration == 600.0
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "outputs: [/tmp/x]\ncapture:\n  correlation_headers: X-CID\n"))
    assert info.value.path == "capture.correlation_headers"


def test_http_server_limits_come_from_the_config(tmp_path: Path) -> None:
    """The daemon's HTTP server limits are config keys (defaults: 10 s head, 30 s body, 256 requests,
    8190-byte lines), and reach the server guard the daemon runs its app with."""
    from vcon_capture.daemon import Daemon

    config = load_config(write(tmp_path, """
outputs: [/tmp/x]
http:
  listen: 127.0.0.1:8080
  header_timeout: 5
  body_timeout: 12.5
  max_concurrent: 1000
  max_line_size: 16384
"""))
    limits = Daemon(config).http_guard.limits
    assert (limits.header_timeout, limits.body_timeout, limits.max_concurrent, limits.max_line_size) == (
        5.0, 12.5, 1000, 16384)
    default = Daemon(load_config(write(tmp_path, "outputs: [/tmp/x]\n"))).http_guard.limits
    assert (default.header_timeout, default.body_timeout, default.max_concurrent) == (10.0, 30.0, 256)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "outputs: [/tmp/x]\nhttp:\n  max_concurrent: 0\n"))
    assert info.value.path == "http.max_concurrent"
