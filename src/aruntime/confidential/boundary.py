"""What a server holds to be a confidential boundary: its attester and the HPKE key that
sealed requests are opened with (in memory only, made at start). `attest(nonce)` is the
server's side of the handshake: evidence that binds the client's nonce and this key."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aruntime.confidential.attester import Attester
from aruntime.confidential.evidence import SOFTWARE, b64, unb64
from aruntime.confidential.sealing import ANSWER_INFO, REQUEST_INFO, SealError, SealingKey, seal
from aruntime.confidential.transparency import TransparencyLog

MAX_NONCE_CHARS = 512


@dataclass
class Boundary:
    attester: Attester
    key: SealingKey = field(default_factory=SealingKey)
    log: TransparencyLog | None = None  # where what this boundary runs is published
    log_index: int | None = None

    def publish(self, log: TransparencyLog, measurements: dict[str, str]) -> None:
        """Put this boundary — its attester, measurements and HPKE key — in the log."""
        self.log = log
        self.log_index = log.append({"kind": "boundary", "attester": self.attester.type,
                                     "measurements": measurements,
                                     "key_hash": self.key.key_hash, "at": int(time.time())})

    @property
    def hardware(self) -> bool:
        return self.attester.type != SOFTWARE

    def attest(self, nonce: str) -> dict[str, Any]:
        if not nonce or len(nonce) > MAX_NONCE_CHARS:
            raise ValueError(f"a nonce is 1-{MAX_NONCE_CHARS} characters")
        evidence = self.attester.attest(nonce, self.key.key_hash)
        return {"object": "attestation", "attester": self.attester.type,
                "evidence": evidence.to_json(), "hpke_public_key": b64(self.key.public_bytes),
                "transparency": None if self.log is None or self.log_index is None
                else self.log.proof(self.log_index)}

    def open_request(self, sealed: str) -> tuple[dict[str, Any], bytes]:
        """The inner request body and the key to seal the answer to (both inside the seal,
        so neither can be swapped in transit); SealError or ValueError when it is not one."""
        try:
            inner = json.loads(self.key.open(unb64(sealed), REQUEST_INFO))
        except (ValueError, TypeError) as exc:
            if isinstance(exc, SealError):
                raise
            raise ValueError(f"the sealed request is not a JSON object: {exc}") from None
        if not isinstance(inner, dict) or not isinstance(inner.get("request"), dict) \
                or not isinstance(inner.get("reply_key"), str):
            raise ValueError("a sealed request holds {\"request\": {...}, \"reply_key\": ...}")
        return inner["request"], unb64(inner["reply_key"])

    @staticmethod
    def seal_answer(body: bytes, reply_key: bytes) -> str:
        return b64(seal(body, reply_key, ANSWER_INFO))
