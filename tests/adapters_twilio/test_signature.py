"""Our X-Twilio-Signature code against the twilio package's RequestValidator."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from adapters.twilio.signature import (
    algorithm_from_settings,
    compute_signature,
    public_request_url,
    validate_signature,
)
from tests.adapters_twilio.support import TOKEN, VOICE, form_lines

URL = "https://hooks.example.com/twilio/voice/status"

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)


def test_corpus_requests_match_request_validator() -> None:
    validator = RequestValidator(TOKEN)
    for pairs in form_lines(VOICE):
        expected = validator.compute_signature(URL, dict(pairs))
        assert compute_signature(TOKEN, URL, pairs) == expected
        assert validate_signature(TOKEN, URL, pairs, expected)
        assert validator.validate(URL, dict(pairs), expected)
        assert not validate_signature(TOKEN, URL + "x", pairs, expected)
        assert not validate_signature("0" * 32, URL, pairs, expected)
        assert not validate_signature(TOKEN, URL, [*pairs, ("Extra", "1")], expected)
        assert not validate_signature(TOKEN, URL, pairs, None)
        assert not validate_signature(TOKEN, URL, pairs, "")


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(min_size=1, max_size=40),
    path=st.text("abcdefghijklmnopqrstuvwxyz/-_.~%0123456789", max_size=30),
    query=st.text("abc=&0123456789", max_size=20),
    params=st.dictionaries(text, text, max_size=8),
    algorithm=st.sampled_from(["HMAC_SHA1", "HMAC_SHA256"]),
)
def test_same_signature_as_request_validator(
    token: str, path: str, query: str, params: dict[str, str], algorithm: str
) -> None:
    url = f"https://hooks.example.com/{path}" + (f"?{query}" if query else "")
    validator = RequestValidator(token)
    expected = validator.compute_signature(url, params, algorithm)
    assert compute_signature(token, url, params.items(), algorithm=algorithm) == expected
    assert validate_signature(token, url, params.items(), expected, algorithm=algorithm)
    # with and without the default port, as RequestValidator.validate accepts
    with_port = url.replace("example.com/", "example.com:443/", 1)
    assert validate_signature(token, with_port, params.items(), expected, algorithm=algorithm)
    assert validator.validate(with_port, params, expected, algorithm) is True


def test_repeated_names_sorted_like_request_validator() -> None:
    class Multi(dict[str, str]):
        def getall(self, name: str) -> list[str]:
            return {"a": ["2", "1", "2"], "b": ["x"]}[name]

    multi = Multi(a="2", b="x")
    expected = RequestValidator(TOKEN).compute_signature(URL, multi)
    assert compute_signature(TOKEN, URL, [("b", "x"), ("a", "2"), ("a", "1"), ("a", "2")]) == expected


def test_websocket_url_and_proxy_base() -> None:
    assert public_request_url("https://hooks.example.com/", "http://127.0.0.1:8080/twilio/media?x=1",
                              "/twilio/media?x=1", websocket=True) == [
        "wss://hooks.example.com/twilio/media?x=1", "https://hooks.example.com/twilio/media?x=1"]
    assert public_request_url(None, "http://10.0.0.1:8080/twilio/voice/status", "/twilio/voice/status",
                              websocket=False) == ["http://10.0.0.1:8080/twilio/voice/status"]
    sig = RequestValidator(TOKEN).compute_signature("wss://hooks.example.com/twilio/media?x=1", {})
    assert validate_signature(TOKEN, "wss://hooks.example.com/twilio/media?x=1", [], sig)
    assert not validate_signature(TOKEN, "wss://hooks.example.com/twilio/media", [], sig)


def test_signature_settings_header() -> None:
    assert algorithm_from_settings(None) == "HMAC_SHA1"
    assert algorithm_from_settings("key=abc,algorithm=HMAC_SHA256") == "HMAC_SHA256"
    assert algorithm_from_settings("key=abc") == "HMAC_SHA1"
    assert not validate_signature(TOKEN, URL, [], "c2ln", algorithm="HMAC_MD5")
