"""Small HTTP pieces of the login endpoints: ``?next=`` checking, the one-time login state,
query parsing and bare responses (``cache-control: no-store`` on every one of them)."""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.types import Scope, Send

from llm_proxy_mw.auth._sessions import Session
from llm_proxy_mw.errors import InvalidRequestError

__all__ = ["allow", "pending_key", "query", "respond", "safe_next", "take_pending"]

_NO_STORE = (b"cache-control", b"no-store")


def safe_next(value: str | None) -> str | None:
    """``value`` if it is a same-origin relative path (``/x``), else ``None``.

    Refused: absolute URLs, scheme-relative ``//host``, backslashes (browsers read ``/\\host``
    as ``//host``), control characters, and anything over 2 KiB.
    """
    if not value or len(value) > 2048 or not value.startswith("/") or value.startswith("//"):
        return None
    if not value.isascii() or "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def pending_key(idp: str) -> str:
    return f"llm_proxy_mw.login.{idp}"


def take_pending(
    session: Session | None, idp: str, state: str | None, now: float
) -> dict[str, Any] | None:
    """The login in progress that ``state`` names, consumed; ``None`` if there is none.

    A state that does not match leaves the genuine login in progress alone, so a forged
    callback cannot cancel it.
    """
    if session is None or not state:
        return None
    pending = session.data.get(pending_key(idp))
    if not isinstance(pending, dict) or not hmac.compare_digest(
        str(pending.get("state")).encode(), state.encode()
    ):
        return None
    del session.data[pending_key(idp)]
    if pending.get("expires_at", 0) <= now:
        return None
    return pending


def query(scope: Scope) -> dict[str, str]:
    """The query's parameters, the first of each name; at most 32 of them."""
    try:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), max_num_fields=32)
    except ValueError:
        raise InvalidRequestError("Too many query parameters.") from None
    first: dict[str, str] = {}
    for key, value in pairs:
        first.setdefault(key, value)
    return first


async def allow(send: Send, method: str, allowed: str) -> bool:
    """``True`` for the allowed method; otherwise answer 405 and return ``False``."""
    if method == allowed:
        return True
    body = {
        "error": {
            "message": f"Method not allowed; use {allowed}.",
            "type": "invalid_request_error",
            "code": "method_not_allowed",
        }
    }
    await respond(send, 405, [(b"allow", allowed.encode())], body=json.dumps(body).encode())
    return False


async def respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    *,
    location: str | None = None,
    body: bytes = b"",
) -> None:
    raw = [_NO_STORE, *headers]
    if status != 204:  # a 204 carries no content-length (RFC 9110 §8.6)
        raw.append((b"content-length", str(len(body)).encode()))
    if body:
        raw.append((b"content-type", b"application/json"))
    if location is not None:
        raw.append((b"location", location.encode("latin-1", "strict")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
