"""Reading the fields of a client's untrusted body for translation: a field of the wrong
type is an ``InvalidRequestError`` naming where it is (``messages[2].content``), never a
crash deep inside a translator."""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError
from llm_proxy_mw.translate._codec import Json

__all__ = [
    "IMAGE_TYPES",
    "data_url",
    "int_at",
    "list_at",
    "object_at",
    "refuse",
    "split_data_url",
    "str_at",
]

#: The image media types Anthropic accepts as base64 data.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


# Each takes the field's place as ``where`` and ``key`` (``"messages[2]"``, ``".content"``),
# joined only for an error: a translation of a valid body builds no place names it never shows.


def object_at(value: Any, where: str, key: str = "") -> Json:
    if not isinstance(value, dict):
        raise _wrong(where + key, "an object")
    return value


def list_at(value: Any, where: str, key: str = "") -> list[Any]:
    if not isinstance(value, list):
        raise _wrong(where + key, "an array")
    return value


def str_at(value: Any, where: str, key: str = "") -> str:
    if not isinstance(value, str):
        raise _wrong(where + key, "a string")
    return value


def int_at(value: Any, where: str, key: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _wrong(where + key, "a non-negative integer")
    return value


def _wrong(where: str, kind: str) -> InvalidRequestError:
    return InvalidRequestError(f"{where}: must be {kind}", param=where)


def refuse(where: str, provider: str) -> UntranslatableError:
    """The error for a parameter ``provider``'s API has no equivalent for."""
    return UntranslatableError(f"{where}: {provider} has no equivalent for it", param=where)


def split_data_url(url: str, where: str, key: str) -> tuple[str, str]:
    """The media type and base64 data of a ``data:<type>;base64,<data>`` URL."""
    header, comma, data = url.partition(",")
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        raise _wrong(where + key, "a base64 data URL")
    return header[5:-7], data


def data_url(media_type: Any, data: Any, where: str) -> str:
    """A base64 ``source``'s media type and data as a data URL."""
    return (
        f"data:{str_at(media_type, where + '.media_type')};base64,{str_at(data, where + '.data')}"
    )
