"""Request bodies as JSON: which content types are JSON, which endpoints take other bodies,
and the one strict parse of a JSON object.

The proxy routes by the ``model`` it reads from the body, so it must read the body exactly as
the provider will: a body it does not parse (another content type, which an upstream such as
Ollama parses as JSON anyway) or parses differently (a key given twice, which parsers resolve
differently) would let the provider serve a model the proxy never routed.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any, cast

from starlette.types import Scope

from llm_proxy_mw.errors import InvalidRequestError

__all__ = ["declares_json", "is_json_type", "parse_object", "takes_other_bodies"]

#: Endpoints whose bodies may be something else than JSON (multipart uploads, an SDP offer):
#: those bodies pass through unparsed, as the provider's own API defines them.
_OTHER_BODIES = re.compile(
    r"/v1/(files|uploads/[^/]+/parts|audio/(transcriptions|translations)"
    r"|images/(edits|variations)|videos|containers/[^/]+/files|realtime/calls)"
)


def takes_other_bodies(route_path: str) -> bool:
    """Whether the endpoint takes bodies other than JSON (uploads)."""
    return _OTHER_BODIES.fullmatch(route_path) is not None


def is_json_type(content_type: bytes) -> bool:
    """Whether a ``content-type`` is JSON: ``application/json`` or ``application/*+json``,
    with any parameters (``charset``)."""
    if content_type == b"application/json":
        return True
    media_type = content_type.partition(b";")[0].strip().lower()
    if media_type == b"application/json":
        return True
    kind, _, subtype = media_type.partition(b"/")
    return kind == b"application" and subtype.endswith(b"+json")


def declares_json(scope: Scope) -> bool:
    """Whether the request says its body is JSON: it has a ``content-type``, and every one
    it has is JSON."""
    found = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            if not is_json_type(value):
                return False
            found = True
    return found


_WHITESPACE = " \t\n\r"
#: ``_skip(text, at).end()``: past the whitespace at ``at`` (the pattern always matches).
_skip = cast("Callable[[str, int], re.Match[str]]", re.compile(r"[ \t\n\r]*").match)
#: The C parts of the standard decoder (typeshed does not declare them): a string's rest
#: after its opening quote, and any value.
_scan_string: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_scan_value: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


#: Top-level keys walked one by one; a body with more is checked by two parses in C.
_WALK_LIMIT = 256


def _loads_object(text: str) -> Any:
    """``json.loads``, except that a top-level object must not repeat a key.

    The top level is walked here, each value parsed by the C scanner: a pairs hook would cost
    a Python call for every object of the body, this costs one step per top-level key, up to
    ``_WALK_LIMIT`` of them (past it, ``_loads_counted``). Anything unexpected goes to
    ``json.loads``, which parses it or raises its own error.
    """
    end = 0
    if text[:1] != "{":
        end = _skip(text, 0).end()
        if text[end : end + 1] != "{":
            return json.loads(text)
    obj: dict[str, Any] = {}
    try:
        # Each round steps past the "{" or "," at ``end``, then reads one key and its value.
        while True:
            end += 1
            char = text[end]
            if char in _WHITESPACE:  # one space, as most clients write ", "
                end += 1
                char = text[end]
                if char in _WHITESPACE:
                    end = _skip(text, end).end()
                    char = text[end]
            if char != '"':
                if char == "}" and not obj:
                    break  # {}
                return json.loads(text)
            key, end = _scan_string(text, end + 1)
            if text[end] != ":":
                end = _skip(text, end).end()
                if text[end] != ":":
                    return json.loads(text)
            end += 1
            if text[end] in _WHITESPACE:  # one space, as most clients write ": "
                end += 1
                if text[end] in _WHITESPACE:
                    end = _skip(text, end).end()
            value, end = _scan_value(text, end)
            if key in obj:
                quoted = json.dumps(key)[:100]
                raise InvalidRequestError(f"The request body gives the key {quoted} twice.")
            obj[key] = value
            if len(obj) == _WALK_LIMIT:
                return _loads_counted(text)
            char = text[end]
            if char in _WHITESPACE:
                end = _skip(text, end).end()
                char = text[end]
            if char != ",":
                break
        if char != "}":
            return json.loads(text)
    except (IndexError, StopIteration):
        return json.loads(text)  # truncated or malformed: its error says where
    end += 1
    if end != len(text) and _skip(text, end).end() != len(text):
        return json.loads(text)
    return obj


def _loads_counted(text: str) -> Any:
    """A top-level object of many keys: parsed as usual, and again with every object
    replaced by its number of pairs (``len``, a C call), duplicates included."""
    obj = json.loads(text)
    if json.loads(text, object_pairs_hook=len) != len(obj):
        raise InvalidRequestError("The request body gives a top-level key twice.")
    return obj


def parse_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object; ``None`` for an empty body.

    Every way it can fail is an ``InvalidRequestError`` (400): invalid UTF-8, malformed
    JSON, a number too long to convert, nesting too deep, a top-level key given twice, or
    a value other than an object.
    """
    if not body.strip():
        return None
    try:
        # Strict UTF-8 (RFC 8259 §8.1): ``json.loads(bytes)`` would also take UTF-16 and
        # UTF-32, and let UTF-8-encoded surrogates through ("surrogatepass"). A leading BOM
        # is dropped here: the "utf-8-sig" codec does the same in Python, not C.
        if body.startswith(codecs.BOM_UTF8):
            body = body[3:]
        parsed = _loads_object(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc.msg}.") from None
    except ValueError:
        # int() refuses more than 4,300 digits (CVE-2020-10735), json.loads with it.
        raise InvalidRequestError("The request body holds a number too long to read.") from None
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.") from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return parsed
