"""Logging filters a host installs on its server's loggers.

``RedactQuerySecrets`` hides secrets in logged URLs' query strings; ``StartupErrorLine``
turns the traceback of a proxy that cannot start into its one-line reason.


A server's access log quotes each request line with its query string (uvicorn:
``"GET /llm/v1/models?key=... HTTP/1.1" 200``), and so does its log of refused websocket
handshakes. A client that sends a key as a query parameter, or a browser coming back from an
identity provider with ``?code=...&state=...``, would leave those secrets in the logs. The
proxy cannot change how its host logs requests, so the host installs this filter on the
loggers that quote URLs::

    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactQuerySecrets())
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

__all__ = ["QUERY_SECRETS", "RedactQuerySecrets", "StartupErrorLine"]

#: Query parameters whose values are redacted unless told otherwise (case-insensitive).
QUERY_SECRETS = frozenset(
    {
        "access_token",
        "api-key",
        "api_key",
        "apikey",
        "client_secret",
        "code",
        "id_token",
        "key",
        "password",
        "refresh_token",
        "state",
        "token",
    }
)


class RedactQuerySecrets(logging.Filter):
    """Replaces the values of secret query parameters with ``mask`` in each record.

    The message and every string argument are redacted in place; the arguments keep their
    number and order, because formatters unpack them (uvicorn's ``AccessFormatter`` reads
    exactly five). No record is dropped. Install it on a logger (applies to the records
    logged there) or on a handler (applies to every record the handler emits).
    """

    def __init__(self, names: Iterable[str] = QUERY_SECRETS, *, mask: str = "***") -> None:
        super().__init__()
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        if not alternatives:
            raise ValueError("names must name at least one query parameter")
        # A value ends where the query syntax or the quoting log line ends it.
        self._pattern = re.compile(rf"([?&](?:{alternatives})=)[^&#\s\"'<>]*", re.IGNORECASE)
        self._mask = mask

    def redact(self, text: str) -> str:
        """``text`` with every secret query value masked."""
        if "=" not in text:
            return text
        return self._pattern.sub(lambda match: match.group(1) + self._mask, text)

    def filter(self, record: logging.LogRecord) -> bool:
        # A message may be any object (``logger.warning(exc)``): it is logged as its str().
        message = record.msg if isinstance(record.msg, str) else str(record.msg)
        redacted = self.redact(message)
        if redacted != message:
            record.msg = redacted
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, Mapping):
            record.args = {k: self.redact(v) if isinstance(v, str) else v for k, v in args.items()}
        return True


_STARTUP_ERROR = "llm_proxy_mw.errors.StartupError: "


class StartupErrorLine(logging.Filter):
    """Logs a ``StartupError`` traceback as its last line, the reason, which says it all.

    Starlette's router runs the host's lifespan and, when it fails, hands the ASGI server
    the whole traceback as the ``lifespan.startup.failed`` message, which uvicorn logs on
    ``uvicorn.error``. A proxy whose store does not open has one thing to say (``cannot
    start: the [store] does not open (...)``); this filter keeps that line and drops the
    trace above it. Any other record passes unchanged::

        logging.getLogger("uvicorn.error").addFilter(StartupErrorLine())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Traceback"):
            last = record.msg.rstrip().rpartition("\n")[2]
            if last.startswith(_STARTUP_ERROR):
                record.msg, record.args = last.removeprefix(_STARTUP_ERROR), None
        return True
