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


def object_at(value: Any, where: str) -> Json:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where}: must be an object", param=where)
    return value


def list_at(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequestError(f"{where}: must be an array", param=where)
    return value


def str_at(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where}: must be a string", param=where)
    return value


def int_at(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{where}: must be a non-negative integer", param=where)
    return value


def refuse(where: str, provider: str) -> UntranslatableError:
    """The error for a parameter ``provider``'s API has no equivalent for."""
    return UntranslatableError(f"{where}: {provider} has no equivalent for it", param=where)


def split_data_url(url: str, where: str) -> tuple[str, str]:
    """The media type and base64 data of a ``data:<type>;base64,<data>`` URL."""
    header, comma, data = url.partition(",")
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        raise InvalidRequestError(f"{where}: must be a base64 data URL", param=where)
    return header[5:-7], data


def data_url(media_type: Any, data: Any, where: str) -> str:
    """A base64 ``source``'s media type and data as a data URL."""
    return (
        f"data:{str_at(media_type, where + '.media_type')};base64,{str_at(data, where + '.data')}"
    )
