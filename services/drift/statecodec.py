"""State bytes for the changelog: JSON, authenticated with HMAC-SHA256.

JSON cannot execute code when parsed, but the monitor state embeds river's serialised
ADWIN (Rust ``bincode``), whose parser panics on malformed input and trusts length
prefixes. So every blob carries a tag over its payload, and nothing inside it is parsed
before the tag verifies: only an instance holding the key can produce state that gets
loaded. Layout: ``b"SD1" + 32-byte tag + JSON payload``.

>>> codec = StateCodec(b"k")
>>> codec.loads(codec.dumps({"a": 1}))
{'a': 1}
>>> codec.loads(b"SD1" + bytes(32) + b"{}")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
services.drift.statecodec.StateIntegrityError: state signature does not verify ...
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from streamml.errors import StreamMLError

MAGIC = b"SD1"
_TAG = 32


class StateIntegrityError(StreamMLError):
    """State bytes that are not ours: wrong key, tampered, truncated or another format."""


class StateCodec:
    """Serialise state as signed JSON; verify before parsing."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the state key must not be empty")
        self._key = key

    def dumps(self, value: Any) -> bytes:
        payload = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        return MAGIC + hmac.new(self._key, payload, hashlib.sha256).digest() + payload

    def loads(self, data: bytes) -> Any:
        if len(data) < len(MAGIC) + _TAG or not data.startswith(MAGIC):
            raise StateIntegrityError("state bytes are not in the SD1 format")
        tag = data[len(MAGIC) : len(MAGIC) + _TAG]
        payload = data[len(MAGIC) + _TAG :]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected):
            raise StateIntegrityError(
                "state signature does not verify (wrong key or tampered bytes)"
            )
        try:
            return json.loads(payload)
        except ValueError as exc:  # signed by us, so only a bug could get here
            raise StateIntegrityError(f"signed state is not JSON: {exc}") from exc
