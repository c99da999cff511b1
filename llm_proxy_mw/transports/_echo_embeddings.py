"""The echo provider's OpenAI embeddings: deterministic unit vectors, as floats or base64.

Each vector is drawn from a hash of its input, so equal inputs embed equally. ``dimensions``
sets the length (16 by default); ``encoding_format: "base64"`` sends the little-endian
float32 bytes, base64-encoded, as OpenAI does (and as its SDK asks for by default).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.transports._echo_prompts import count, field
from llm_proxy_mw.transports._echo_wire import JSON_HEADERS, Rendered, dumps

__all__ = ["embeddings"]

_DEFAULT_DIMENSIONS = 16
_MAX_DIMENSIONS = 3072  # text-embedding-3-large's, the largest OpenAI serves


def _vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.shake_256(text.encode()).digest(dimensions)
    raw = [b / 255 - 0.5 for b in digest]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def embeddings(body: dict[str, Any]) -> Rendered:
    inputs = body.get("input")
    if inputs is None or inputs == [] or inputs == "":
        raise InvalidRequestError("'input' must be a non-empty string or array.", param="input")
    # A string, strings, a token array or token arrays: a token array is one input.
    if not isinstance(inputs, list) or all(isinstance(t, int) for t in inputs):
        inputs = [inputs]
    dimensions = field(body, "dimensions", int, _DEFAULT_DIMENSIONS)
    if not 0 < dimensions <= _MAX_DIMENSIONS:
        raise InvalidRequestError(
            f"'dimensions' must be between 1 and {_MAX_DIMENSIONS}.", param="dimensions"
        )
    encoding = field(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequestError(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    data = []
    for index, text in enumerate(inputs):
        vector: Any = _vector(str(text), dimensions)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(t) if isinstance(t, list) else count(str(t)) for t in inputs)
    payload = {
        "object": "list",
        "data": data,
        "model": body.get("model", "echo"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return JSON_HEADERS, [dumps(payload)]
