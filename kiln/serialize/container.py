"""The .kiln byte format: a fixed header, a JSON manifest, a safetensors blob, one SHA-256 over all of it.

    offset  size  field
    0       8     magic  b"KILN\\x89\\r\\n\\x1a" (the \\x89 and line ends catch text-mode copies, like PNG's)
    8       4     format version, little-endian u32
    12      8     manifest length in bytes, u64
    20      8     weights length in bytes, u64
    28      32    SHA-256 of bytes [0, 28) + manifest + weights
    60      ...   manifest (UTF-8 JSON), then weights (safetensors)

The digest covers the header fields too, so no byte of the file can change unnoticed:
a flipped byte in the magic, version or lengths is refused before the digest is even
compared, and one anywhere else fails the digest. Nothing here unpickles or imports.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from kiln.errors import CorruptFileError

MAGIC = b"KILN\x89\r\n\x1a"
FORMAT_VERSION = 1
_FIELDS = struct.Struct("<IQQ")
_DIGEST_SIZE = 32
HEADER_SIZE = len(MAGIC) + _FIELDS.size + _DIGEST_SIZE

# What other formats a user may hand us by mistake start with, to say what the file looks like.
_FOREIGN = [
    (b"\x80", "a Python pickle (e.g. torch.save of a model); Kiln never loads pickles"),
    (b"PK\x03\x04", "a zip archive (torch.save writes these); Kiln never loads pickles"),
    (b"\x08", "possibly an ONNX/protobuf file"),
    (b"{", "a JSON file, not a .kiln file"),
]


@dataclass
class Contents:
    manifest: dict
    weights: bytes
    version: int


def pack(manifest: dict, weights: bytes) -> bytes:
    # allow_nan=False: the manifest must be strict JSON; non-finite floats are encoded by graph_json.
    body = json.dumps(manifest, separators=(",", ":"), allow_nan=False, sort_keys=True).encode("utf-8")
    head = MAGIC + _FIELDS.pack(FORMAT_VERSION, len(body), len(weights))
    digest = hashlib.sha256()
    for part in (head, body, weights):
        digest.update(part)
    return b"".join([head, digest.digest(), body, weights])


def unpack(data: bytes, source: str) -> Contents:
    """Check every byte of `data` and split it; CorruptFileError (naming `source`) on any doubt."""

    def refuse(why: str) -> CorruptFileError:
        return CorruptFileError(f"{source} cannot be loaded: {why}")

    if not data:
        raise refuse("the file is empty")
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise refuse(f"the file is truncated ({len(data)} bytes, shorter than the header)")
        looks = next((what for prefix, what in _FOREIGN if data.startswith(prefix)), "not a .kiln file")
        raise refuse(f"it does not start with the Kiln magic bytes; it looks like {looks}")
    if len(data) < HEADER_SIZE:
        raise refuse(f"the file is truncated ({len(data)} bytes, shorter than the {HEADER_SIZE}-byte header)")
    version, manifest_len, weights_len = _FIELDS.unpack_from(data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise refuse(f"it has format version {version}; this Kiln reads version {FORMAT_VERSION} (the file or Kiln is newer/older)")
    expected = HEADER_SIZE + manifest_len + weights_len
    if len(data) < expected:
        raise refuse(f"the file is truncated or damaged: the header promises {expected} bytes, the file has {len(data)}")
    if len(data) > expected:
        raise refuse(f"the file has {len(data) - expected} unexpected bytes after its end (damaged or appended to)")
    digest_at = len(MAGIC) + _FIELDS.size
    stored = data[digest_at:HEADER_SIZE]
    digest = hashlib.sha256()
    digest.update(memoryview(data)[:digest_at])
    digest.update(memoryview(data)[HEADER_SIZE:])
    if digest.digest() != stored:
        raise refuse("its SHA-256 checksum does not match: some bytes were changed after it was written (corrupt or tampered)")
    body = data[HEADER_SIZE : HEADER_SIZE + manifest_len]
    try:
        manifest = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise refuse(f"its manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise refuse("its manifest is not a JSON object")
    return Contents(manifest, data[HEADER_SIZE + manifest_len :], version)
