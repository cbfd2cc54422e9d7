"""Signed and encrypted forms, made with joserfc (delivery.signing) and checked with jwcrypto."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwcrypto import jwe as jc_jwe
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from delivery import cli
from delivery.signing import VerifyError, decrypt_vcon, encrypt_vcon, sign_vcon, verify_vcon
from tests.delivery.conftest import make_vcon

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: PrivateKey, issuer: str, issuer_key: PrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


class Pki:
    def __init__(self, leaf_key: PrivateKey) -> None:
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca = _cert("Test CA", self.ca_key, "Test CA", self.ca_key, True)
        self.leaf_key = leaf_key
        self.leaf = _cert("capture.example", leaf_key, "Test CA", self.ca_key, False)
        self.key_pem = _pem_key(leaf_key)
        self.chain = [c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf, self.ca)]
        self.ca_pem = self.chain[1]


@pytest.fixture(scope="module")
def rsa_pki() -> Pki:
    return Pki(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_pki() -> Pki:
    return Pki(ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_signed_form_verifies_with_jwcrypto(alg: str, rsa_pki: Pki, ec_pki: Pki) -> None:
    pki = rsa_pki if alg == "RS256" else ec_pki
    vcon = make_vcon(1)
    signed = sign_vcon(vcon, key_pem=pki.key_pem, cert_chain_pem=pki.chain, alg=alg)
    assert set(signed) == {"payload", "signatures"}
    [member] = signed["signatures"]
    assert member["header"]["uuid"] == vcon["uuid"]
    assert len(member["header"]["x5c"]) == 2
    # Another library: jwcrypto, with the key taken from the leaf certificate in x5c.
    token = jc_jws.JWS()
    token.deserialize(json.dumps(signed))
    leaf_pem = pki.leaf.public_bytes(serialization.Encoding.PEM)
    token.verify(jc_jwk.JWK.from_pem(leaf_pem), alg=alg)
    assert json.loads(token.payload) == vcon
    assert token.jose_header[0]["alg"] == alg  # general serialization: one header per signature
    assert verify_vcon(signed, trust=[pki.ca_pem]) == vcon


def test_tampered_or_untrusted_is_refused(rsa_pki: Pki, ec_pki: Pki) -> None:
    signed = sign_vcon(make_vcon(1), key_pem=rsa_pki.key_pem, cert_chain_pem=rsa_pki.chain)
    other = dict(signed, payload=sign_vcon(make_vcon(2), key_pem=rsa_pki.key_pem,
                                           cert_chain_pem=rsa_pki.chain)["payload"])
    with pytest.raises(VerifyError, match="does not verify"):
        verify_vcon(other)
    with pytest.raises(VerifyError, match="trusted"):
        verify_vcon(signed, trust=[ec_pki.ca_pem])
    with pytest.raises(VerifyError, match="not a signed"):
        verify_vcon(make_vcon(1))
    with pytest.raises(ValueError, match="not for the signing key"):
        sign_vcon(make_vcon(1), key_pem=rsa_pki.key_pem, cert_chain_pem=ec_pki.chain)


def test_encrypted_form_round_trips_through_jwcrypto(rsa_pki: Pki) -> None:
    signed = sign_vcon(make_vcon(1), key_pem=rsa_pki.key_pem, cert_chain_pem=rsa_pki.chain)
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    recipient_pem = _pem_key(recipient)
    encrypted = encrypt_vcon(signed, public_key_pem=recipient.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    token = jc_jwe.JWE()
    token.deserialize(json.dumps(encrypted), key=jc_jwk.JWK.from_pem(recipient_pem))
    header = token.jose_header[0] if isinstance(token.jose_header, list) else token.jose_header
    assert (header["enc"], header["alg"], header["cty"]) == ("A256CBC-HS512", "RSA-OAEP", "application/vcon")
    assert json.loads(token.payload) == signed
    assert decrypt_vcon(encrypted, recipient_pem) == signed
    # And the other direction: jwcrypto encrypts, we decrypt.
    theirs = jc_jwe.JWE(json.dumps(signed).encode(),
                        json.dumps({"alg": "RSA-OAEP", "enc": "A256CBC-HS512", "cty": "application/vcon"}))
    theirs.add_recipient(jc_jwk.JWK.from_pem(recipient.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)))
    assert decrypt_vcon(json.loads(theirs.serialize()), recipient_pem) == signed


def test_verify_command(tmp_path: Path, rsa_pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signed = sign_vcon(make_vcon(1), key_pem=rsa_pki.key_pem, cert_chain_pem=rsa_pki.chain)
    (tmp_path / "ca.pem").write_bytes(rsa_pki.ca_pem)
    (tmp_path / "key.pem").write_bytes(_pem_key(recipient))
    (tmp_path / "s.json").write_text(json.dumps(signed))
    (tmp_path / "e.json").write_text(json.dumps(encrypt_vcon(signed, public_key_pem=recipient.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))))
    assert cli.main(["verify", str(tmp_path / "s.json"), "--trust", str(tmp_path / "ca.pem")]) == 0
    assert cli.main(["verify", str(tmp_path / "e.json"), "--key", str(tmp_path / "key.pem")]) == 0
    assert cli.main(["verify", str(tmp_path / "e.json")]) == 1
    out = capsys.readouterr()
    assert "verified vCon" in out.out and "pass --key" in out.err
