"""Signed and encrypted vCons (draft-ietf-vcon-vcon-core, "Signed Form" and "Encrypted Form").

Signed: JWS General JSON Serialization (RFC 7515 §7.2.1)::

    {"payload": base64url(JSON of the unsigned vCon),
     "signatures": [{"protected": base64url({"alg": "RS256"|"ES256"}),
                     "header": {"x5c": [leaf, intermediates..., (root)], "uuid": "<vCon uuid>"},
                     "signature": "..."}]}

``alg`` is integrity-protected; the draft puts ``x5c`` and ``uuid`` in the (unprotected) header so a
store can index a signed vCon without decoding it. ``x5c`` entries are standard base64 DER (RFC 7515
§4.1.6), leaf first.

Encrypted: sign first, then JWE General JSON (RFC 7516 §7.2.1) with ``RSA-OAEP`` key encryption and
``A256CBC-HS512`` content encryption, ``cty: application/vcon``.

JOSE is done by joserfc; :func:`verify_vcon` checks the ``x5c`` chain with ``cryptography`` (each
certificate directly issued by the next, all within their validity, the last one a trust anchor or
issued by one). Without trust anchors it proves integrity under the embedded key, not identity.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.registry import HeaderParameter

__all__ = ["SIGN_ALGORITHMS", "VerifyError", "decrypt_vcon", "encrypt_vcon", "sign_vcon", "verify_vcon"]

SIGN_ALGORITHMS = ("RS256", "ES256")
KEY_ALG = "RSA-OAEP"
CONTENT_ENC = "A256CBC-HS512"
VCON_CTY = "application/vcon"
#: joserfc caps sizes for safety (128 kB payload); recordings make vCons much larger.
_MAX_SIZE = 1 << 30


class VerifyError(Exception):
    """The document is not a valid signed (or decryptable) vCon."""


def _jws_registry() -> jws.JWSRegistry:
    registry = jws.JWSRegistry(
        header_registry={"uuid": HeaderParameter("vCon uuid", "str")}, algorithms=list(SIGN_ALGORITHMS)
    )
    registry.max_payload_length = _MAX_SIZE
    registry.max_header_length = 1 << 16
    return registry


def _jwe_registry() -> jwe.JWERegistry:
    registry = jwe.JWERegistry(algorithms=[KEY_ALG, CONTENT_ENC])
    registry.max_ciphertext_length = _MAX_SIZE
    return registry


def _b64url_json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _private_key(key_pem: bytes, alg: str) -> RSAKey | ECKey:
    loaded = serialization.load_pem_private_key(key_pem, password=None)
    if alg == "RS256" and isinstance(loaded, rsa.RSAPrivateKey):
        return RSAKey.import_key(key_pem)
    if alg == "ES256" and isinstance(loaded, ec.EllipticCurvePrivateKey) and loaded.curve.name == "secp256r1":
        return ECKey.import_key(key_pem)
    raise ValueError(f"the private key does not fit {alg} (RS256 needs RSA, ES256 needs P-256)")


def sign_vcon(
    vcon: Mapping[str, Any], *, key_pem: bytes, cert_chain_pem: Sequence[bytes], alg: str = "RS256"
) -> dict[str, Any]:
    """Sign an unsigned vCon; returns the JWS General JSON form. ``cert_chain_pem`` is leaf first (a PEM
    bundle per element is fine); the leaf's public key must match ``key_pem``. Raises ValueError."""
    if alg not in SIGN_ALGORITHMS:
        raise ValueError(f"alg must be one of {', '.join(SIGN_ALGORITHMS)}")
    uuid = vcon.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise ValueError("the vCon has no 'uuid'")
    certs = [cert for pem in cert_chain_pem for cert in x509.load_pem_x509_certificates(pem)]
    if not certs:
        raise ValueError("a certificate chain is required for x5c")
    key = _private_key(key_pem, alg)
    private = serialization.load_pem_private_key(key_pem, password=None)
    if certs[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError("the first certificate of the chain is not for the signing key")
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode() for cert in certs]
    member = {"protected": {"alg": alg}, "header": {"x5c": x5c, "uuid": uuid}}
    signed = jws.serialize_json(cast(Any, [member]), _b64url_json(dict(vcon)), key, registry=_jws_registry())
    return dict(signed)


def _load_chain(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not x5c or not all(isinstance(item, str) for item in x5c):
        raise VerifyError("x5c must be a non-empty list of base64 certificates")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(item, validate=True)) for item in x5c]
    except ValueError as exc:
        raise VerifyError("x5c holds something that is not a DER certificate") from exc


def _check_chain(chain: list[x509.Certificate], trust: Sequence[x509.Certificate] | None) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerifyError(f"certificate {cert.subject.rfc4514_string()!r} is outside its validity period")
    try:
        for cert, issuer in itertools.pairwise(chain):
            cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerifyError("the x5c chain is broken (a certificate is not issued by the next)") from exc
    if trust is None:
        return
    last = chain[-1]
    for anchor in trust:
        if anchor == last:
            return
        try:
            last.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise VerifyError("the x5c chain does not lead to a trusted certificate")


def verify_vcon(doc: Mapping[str, Any], *, trust: Sequence[bytes] | None = None) -> dict[str, Any]:
    """Verify a signed vCon and return the vCon inside. ``trust`` is a list of PEM CA certificates
    (bundles allowed); every signature must verify and chain to one of them. Raises :class:`VerifyError`."""
    if "ciphertext" in doc:
        raise VerifyError("the document is encrypted; decrypt it first")
    signatures = doc.get("signatures")
    if not isinstance(doc.get("payload"), str) or not isinstance(signatures, list) or not signatures:
        raise VerifyError("not a signed vCon (JWS General JSON with payload and signatures expected)")
    anchors = None if trust is None else [c for pem in trust for c in x509.load_pem_x509_certificates(pem)]
    registry = _jws_registry()
    payload: bytes | None = None
    header_uuids = []
    for index, member in enumerate(signatures):
        if not isinstance(member, Mapping):
            raise VerifyError(f"signature {index} is not an object")
        header = member.get("header") if isinstance(member.get("header"), Mapping) else {}
        assert isinstance(header, Mapping)
        try:
            protected = json.loads(base64.urlsafe_b64decode(str(member.get("protected", "")) + "=="))
        except ValueError as exc:
            raise VerifyError(f"signature {index}: protected header is not base64url JSON") from exc
        x5c = header.get("x5c", protected.get("x5c") if isinstance(protected, dict) else None)
        chain = _load_chain(x5c)
        _check_chain(chain, anchors)
        public_pem = chain[0].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key: RSAKey | ECKey
        key = RSAKey.import_key(public_pem) if isinstance(chain[0].public_key(), rsa.RSAPublicKey) else (
            ECKey.import_key(public_pem)
        )
        single = {"payload": doc["payload"], "signatures": [dict(member)]}
        try:
            result = jws.deserialize_json(cast(Any, single), key, registry=registry)
        except (JoseError, ValueError) as exc:
            raise VerifyError(f"signature {index} does not verify ({type(exc).__name__})") from exc
        payload = result.payload
        if "uuid" in header:
            header_uuids.append(header["uuid"])
    assert payload is not None
    try:
        vcon = json.loads(payload)
    except ValueError as exc:
        raise VerifyError("the signed payload is not JSON") from exc
    if not isinstance(vcon, dict):
        raise VerifyError("the signed payload is not a JSON object")
    if any(uuid != vcon.get("uuid") for uuid in header_uuids):
        raise VerifyError("the header uuid does not match the vCon's uuid")
    return vcon


def encrypt_vcon(
    signed: Mapping[str, Any], *, recipient_cert_pem: bytes | None = None, public_key_pem: bytes | None = None
) -> dict[str, Any]:
    """Encrypt a (signed) vCon for one RSA recipient; returns JWE General JSON. Raises ValueError
    (bad arguments) or TypeError (not an RSA key)."""
    if (recipient_cert_pem is None) == (public_key_pem is None):
        raise ValueError("give exactly one of recipient_cert_pem, public_key_pem")
    if recipient_cert_pem is not None:
        public = x509.load_pem_x509_certificate(recipient_cert_pem).public_key()
        public_key_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    assert public_key_pem is not None
    if not isinstance(serialization.load_pem_public_key(public_key_pem), rsa.RSAPublicKey):
        raise TypeError("RSA-OAEP needs an RSA recipient key")
    obj = jwe.GeneralJSONEncryption({"enc": CONTENT_ENC, "cty": VCON_CTY}, _b64url_json(dict(signed)))
    obj.add_recipient({"alg": KEY_ALG}, RSAKey.import_key(public_key_pem))
    return dict(jwe.encrypt_json(obj, None, registry=_jwe_registry()))


def decrypt_vcon(doc: Mapping[str, Any], key_pem: bytes) -> dict[str, Any]:
    """Decrypt a JWE General JSON vCon with the recipient's RSA private key; returns the inner document
    (usually the signed form). Raises :class:`VerifyError`."""
    if "ciphertext" not in doc:
        raise VerifyError("not an encrypted vCon (JWE General JSON expected)")
    try:
        key = RSAKey.import_key(key_pem)
        compact = _as_compact(doc)
        if compact is not None:
            # joserfc's JSON decryption re-encodes the protected header for the AAD instead of using the
            # received string (RFC 7516 §5.2 step 14), which breaks on other producers' spacing; the
            # compact path uses the received bytes, so take it whenever the document fits it.
            plaintext = jwe.decrypt_compact(compact, key, registry=_jwe_registry()).plaintext
        else:
            plaintext = jwe.decrypt_json(cast(Any, dict(doc)), key, registry=_jwe_registry()).plaintext
        inner = json.loads(plaintext or b"")
    except (JoseError, ValueError) as exc:
        raise VerifyError(f"cannot decrypt ({type(exc).__name__})") from exc
    if not isinstance(inner, dict):
        raise VerifyError("the decrypted content is not a JSON object")
    return inner


def _as_compact(doc: Mapping[str, Any]) -> str | None:
    """The compact serialization of a one-recipient JWE whose headers are all protected, else None."""
    if "unprotected" in doc or "aad" in doc:
        return None
    recipients = doc.get("recipients")
    if recipients is None:
        recipient: Any = doc
    elif isinstance(recipients, list) and len(recipients) == 1:
        recipient = recipients[0]
    else:
        return None
    if not isinstance(recipient, Mapping) or recipient.get("header"):
        return None
    parts = [doc.get("protected"), recipient.get("encrypted_key"), doc.get("iv"), doc.get("ciphertext"),
             doc.get("tag")]
    if not all(isinstance(part, str) for part in parts):
        return None
    return ".".join(cast(list[str], parts))
