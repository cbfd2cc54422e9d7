"""AsteriskConfig.from_mapping: defaults, key paths in errors, secrets only by env name."""

from __future__ import annotations

import pytest

from adapters.asterisk.config import AsteriskConfig
from vcon_capture.errors import ConfigError


def test_full_example() -> None:
    cfg = AsteriskConfig.from_mapping({
        "ami": {"host": "10.0.0.7", "username": "vcon", "secret_env": "AMI_SECRET",
                "reconnect": {"min_seconds": 0.5, "max_seconds": 30}},
        "ari": {"url": "http://10.0.0.7:8088/", "username": "vcon", "password_env": "ARI_PW", "app": "vcon"},
        "recordings": {"roots": ["/var/spool/asterisk/monitor"], "mode": "reference",
                       "url_base": "https://media.example/ast", "path_map": {"/var/spool/asterisk": "/mnt/ast"}},
    })
    assert cfg.ami is not None and cfg.ami.port == 5038 and cfg.ami.reconnect_min_seconds == 0.5
    assert cfg.ari is not None and cfg.ari.url == "http://10.0.0.7:8088" and cfg.ari.subscribe_all is False
    assert cfg.recordings.path_map == (("/var/spool/asterisk", "/mnt/ast"),)
    assert cfg.party_domain == "10.0.0.7"
    assert cfg.ami.secret({"AMI_SECRET": "x"}) == "x"
    assert cfg.ami.auth == "md5"  # challenge and response unless told otherwise
    assert AsteriskConfig.from_mapping({"ami": {"auth": "PLAIN"}}).ami.auth == "plain"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({}, "asterisk"),
        ({"ami": {"port": 0}}, "asterisk.ami.port"),
        ({"ami": {"port": "5038"}}, "asterisk.ami.port"),
        ({"ami": {"secret_env": "not a name"}}, "asterisk.ami.secret_env"),
        ({"ami": {"reconnect": {"min_seconds": 5, "max_seconds": 1}}}, "asterisk.ami.reconnect.max_seconds"),
        ({"ami": {"bogus": 1}}, "asterisk.ami.bogus"),
        ({"ami": {"auth": "sha1"}}, "asterisk.ami.auth"),
        ({"ari": {"url": "ftp://x"}}, "asterisk.ari.url"),
        ({"ari": {"url": "http://u:p@x"}}, "asterisk.ari.url"),
        ({"ari": {"app": "a b"}}, "asterisk.ari.app"),
        ({"ami": {}, "recordings": {"roots": ["relative"]}}, "asterisk.recordings.roots"),
        ({"ami": {}, "recordings": {"mode": "reference"}}, "asterisk.recordings.url_base"),
        ({"ami": {}, "recordings": {"mode": "copy"}}, "asterisk.recordings.mode"),
        ({"ami": {}, "recordings": {"url_base": "http://x"}}, "asterisk.recordings.url_base"),
        ({"ami": {}, "end_linger_seconds": -1}, "asterisk.end_linger_seconds"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        AsteriskConfig.from_mapping(data)
    assert err.value.path == path


def test_missing_secret_names_the_key_not_the_value() -> None:
    cfg = AsteriskConfig.from_mapping({"ami": {"secret_env": "NOPE_SECRET"}})
    assert cfg.ami is not None
    with pytest.raises(ConfigError) as err:
        cfg.ami.secret({})
    assert err.value.path == "asterisk.ami.secret_env" and "NOPE_SECRET" in str(err.value)
