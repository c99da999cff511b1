"""Store URLs: the SQLite path inside one, and the redacted form that logs may show."""

from __future__ import annotations

import re

__all__ = ["redact_url", "sqlite_path"]

# Greedy up to the last "@": a password may itself contain "@", "/" or "#", and hiding
# too much of a URL in a log line is harmless while showing part of a password is not.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://).*@")
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """The URL with any user info and ``password=`` query value replaced by ``***``.

    ``redis://:secret@host:6379/0`` becomes ``redis://***@host:6379/0``. SQLite URLs carry
    no credentials (and their paths may contain ``@``), so they are returned unchanged.
    """
    if url.lower().startswith("sqlite:"):
        return url
    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", url, count=1))


def sqlite_path(url: str) -> str:
    """The database path of ``sqlite:///relative.db``, ``sqlite:////abs.db`` or
    ``sqlite:///:memory:`` (SQLAlchemy's form: three slashes, then the path as written)."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    if not rest.startswith("/") or len(rest) == 1:
        raise ValueError(f"{url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db")
    if "?" in rest:
        raise ValueError(f"{url!r}: query parameters are not supported in sqlite:// URLs")
    return rest[1:]
