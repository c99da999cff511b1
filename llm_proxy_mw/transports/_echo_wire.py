"""How the echo provider frames its answers: JSON bodies and SSE streams."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JSON_HEADERS", "SSE_HEADERS", "Rendered", "dumps"]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]

#: An answer's response headers and body chunks.
Rendered = tuple[list[tuple[bytes, bytes]], list[bytes]]


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
