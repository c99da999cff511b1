"""The smallest value a JSON Schema accepts, for the echo provider's tool arguments and
structured output: required properties only, the first enum value, consts as given.

SDKs send schemas generated from pydantic models (``$defs`` and local ``$ref``, ``anyOf``
for optional fields) and parse the answer back into the model, so those are followed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["minimal_value"]

#: Beyond this nesting (a schema that refers to itself through required fields) the value
#: is cut short with an empty object rather than recursing without end.
_MAX_DEPTH = 32


def minimal_value(schema: Any, text: str) -> Any:
    """A minimal instance of ``schema``; strings are ``text``, so the answer still echoes."""
    return _value(schema, schema, text, 0)


def _value(schema: Any, root: Any, text: str, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return {}
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _value(_resolve(ref, root), root, text, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _value(options[0], root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        limit = schema.get("maxLength")
        return text[:limit] if isinstance(limit, int) and limit >= 0 else text
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        return low if isinstance(low, int | float) and not isinstance(low, bool) else 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if kind == "array":
        count = schema.get("minItems")
        count = count if isinstance(count, int) and 0 < count <= _MAX_DEPTH else 0
        return [_value(schema.get("items"), root, text, depth + 1) for _ in range(count)]
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    return {
        name: _value(properties.get(name), root, text, depth + 1)
        for name in required
        if isinstance(name, str)
    }


def _resolve(ref: str, root: Any) -> Any:
    """A local reference (``#/$defs/Name``) in ``root``; anything else resolves to ``{}``."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node
