"""HPKE (RFC 9180) sealing: a request body sealed to the attested boundary's X25519 key, an
answer sealed back to the client's ephemeral key. Single-shot (`cryptography` >= 47): each
message is `enc || ciphertext` under DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, with
`info` naming what the message is, so a sealed request cannot be opened as an answer.

A `SealingKey` is the boundary's (or the client's ephemeral) private key; its `public_bytes`
is what evidence binds (`evidence.key_hash`).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from aruntime.confidential.evidence import b64, key_hash

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
REQUEST_INFO = b"aruntime confidential request v1"
ANSWER_INFO = b"aruntime confidential answer v1"


class SealError(ValueError):
    """A sealed message that does not open: wrong key, altered or truncated bytes."""


class SealingKey:
    """An X25519 private key kept in memory only; its repr never shows it."""

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private = private or X25519PrivateKey.generate()

    def __repr__(self) -> str:
        return f"SealingKey({self.key_hash})"

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)

    @property
    def key_hash(self) -> str:
        return key_hash(self.public_bytes)

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RCAR's `tee-pubkey`), for a key broker to encrypt to."""
        return {"kty": "OKP", "crv": "X25519", "x": b64(self.public_bytes)}

    def open_jwe(self, token: str) -> bytes:
        """A compact JWE (ECDH-ES, A256GCM) to this key, as a key broker releases one."""
        from joserfc import jwe
        from joserfc.errors import JoseError
        from joserfc.jwk import OKPKey

        pem = self._private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        try:
            return bytes(jwe.decrypt_compact(token, OKPKey.import_key(pem)).plaintext or b"")
        except (JoseError, ValueError) as exc:
            raise SealError(f"the released resource does not open ({type(exc).__name__})") \
                from None

    def open(self, sealed: bytes, info: bytes) -> bytes:
        try:
            return SUITE.decrypt(sealed, self._private, info=info)
        except (InvalidTag, ValueError) as exc:
            raise SealError(f"the sealed message does not open ({type(exc).__name__})") from None


def seal(plaintext: bytes, public_bytes: bytes, info: bytes) -> bytes:
    """`plaintext` sealed to the X25519 public key `public_bytes` (32 raw bytes)."""
    try:
        public = X25519PublicKey.from_public_bytes(public_bytes)
    except ValueError as exc:
        raise SealError(f"not an X25519 public key: {exc}") from None
    return SUITE.encrypt(plaintext, public, info=info)
