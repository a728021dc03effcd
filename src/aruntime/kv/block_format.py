"""The stored form of one KV block outside the device: a self-describing header (key scheme,
key, dtype, shape, payload checksum) followed by the raw tensor bytes.

Every read is checked against the reader's scheme and the key it asked for, so a corrupt,
truncated or foreign block is refused (StaleBlockError) and recomputed, never served.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import asdict, dataclass

from aruntime.kv.keys import BlockKey, KeyScheme

MAGIC = b"ARKV\x02"


class StaleBlockError(ValueError):
    """A stored block that must not be served: corrupt, truncated, or from another scheme."""


class KeySchemeMismatchError(RuntimeError):
    """An engine and a store disagree on how keys are made: every lookup would silently miss."""


def scheme_descriptor(scheme: KeyScheme) -> dict[str, object]:
    return asdict(scheme)


@dataclass(frozen=True, slots=True)
class BlockPayload:
    data: bytes | bytearray  # the tensor bytes, C order
    dtype: str
    shape: tuple[int, ...]


def encode(scheme: KeyScheme, key: BlockKey, payload: BlockPayload) -> bytes:
    header = json.dumps({
        "scheme": scheme_descriptor(scheme), "key": key.hex(), "dtype": payload.dtype,
        "shape": list(payload.shape), "nbytes": len(payload.data),
        # CRC-32 catches corruption and truncation at ~3x the speed of SHA-256 on the restore
        # path; what a block is (scheme, key) is checked from the header, not trusted to a hash.
        "crc32": zlib.crc32(payload.data),
    }, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload.data


def decode(blob: bytes, scheme: KeyScheme, key: BlockKey) -> BlockPayload:
    """The payload of `blob`, if it is exactly the block `key` under `scheme`."""
    if len(blob) < len(MAGIC) + 4 or not blob.startswith(MAGIC):
        raise StaleBlockError("not an ARuntime KV block (bad magic or truncated header)")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start:start + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StaleBlockError("unreadable block header") from None
    if header.get("scheme") != scheme_descriptor(scheme):
        raise StaleBlockError(f"block from another key scheme: {header.get('scheme')}")
    if header.get("key") != key.hex():
        raise StaleBlockError("block stored under another key")
    data = bytearray(blob[start + size:])  # writable, so a tensor can view it without a copy
    if len(data) != header.get("nbytes"):
        raise StaleBlockError(f"truncated block: {len(data)} of {header.get('nbytes')} bytes")
    if zlib.crc32(data) != header.get("crc32"):
        raise StaleBlockError("block checksum mismatch")
    return BlockPayload(data, str(header["dtype"]), tuple(header["shape"]))
