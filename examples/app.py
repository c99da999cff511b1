"""A host Starlette app with a route of its own and the LLM proxy mounted at ``/llm``.

Run it with ``make demo`` (or ``uvicorn examples.app:app``). It reads the TOML file named by
``LLM_PROXY_CONFIG``; without one it serves the offline ``echo`` provider, plus OpenAI and
Anthropic when ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` are set. The proxy sits in the host's
route table under a standard ``Mount``, so middleware the host adds (CORS, logging,
OpenTelemetry's ASGI instrumentation, its own auth) sees proxied requests too.
``LLM_PROXY_LOG_FORMAT=json`` makes the console JSON, one object per line, with the proxy's
access record (one per proxied request) among them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from llm_proxy_mw import LLMProxy, build_proxy, load_config, tuned_gc
from llm_proxy_mw.logging_filters import RedactQuerySecrets, StartupErrorLine


def redact_logged_urls() -> None:
    """Keep ``?key=``, ``?code=``, ``?state=`` and other query secrets out of uvicorn's logs
    (its access log and its log of refused websocket handshakes quote each URL in full), and
    a proxy that cannot start to its one-line reason."""
    for name, filters in (
        ("uvicorn.access", [RedactQuerySecrets]),
        ("uvicorn.error", [RedactQuerySecrets, StartupErrorLine]),
    ):
        logger = logging.getLogger(name)
        for kind in filters:
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())


redact_logged_urls()

#: What every ``LogRecord`` has; anything else on a record came in its ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of its message, with terminal colours
}


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's ``extra``
    fields at the top level (the access record's ``request_id``, ``status``, ...).

    The standard library's, so that the example needs nothing the proxy does not; a host
    would use python-json-logger's ``JsonFormatter`` or structlog's the same way.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES:
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(env: Mapping[str, str] = os.environ, stream: TextIO | None = None) -> None:
    """``LLM_PROXY_LOG_FORMAT=json``: the proxy's records at INFO (its access records among
    them) as JSON lines on ``stream`` (stderr), and uvicorn's handlers made JSON too. Any
    other value leaves logging as the server set it up: readable text."""
    if env.get("LLM_PROXY_LOG_FORMAT", "text").lower() != "json":
        return
    formatter = JsonLines()
    for name in ("uvicorn", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
    proxy_logger = logging.getLogger("llm_proxy_mw")
    if not any(isinstance(h.formatter, JsonLines) for h in proxy_logger.handlers):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        proxy_logger.addHandler(handler)
    proxy_logger.setLevel(logging.INFO)
    proxy_logger.propagate = False  # one line per record, not a second one in text


configure_logging()


def default_config(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The echo provider for any model, plus the real providers whose keys are set."""
    providers: dict[str, Any] = {}
    if env.get("OPENAI_API_KEY"):
        providers["openai"] = {
            "kind": "openai",
            "api_key": env["OPENAI_API_KEY"],
            "models": ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"],
        }
    if env.get("ANTHROPIC_API_KEY"):
        providers["anthropic"] = {
            "kind": "anthropic",
            "api_key": env["ANTHROPIC_API_KEY"],
            "models": ["claude-sonnet-4-5", "claude-haiku-4-5"],
        }
    providers["echo"] = {"kind": "echo", "models": ["*"]}
    return {"providers": providers}


def make_proxy(env: Mapping[str, str] = os.environ) -> LLMProxy:
    path = env.get("LLM_PROXY_CONFIG")
    return build_proxy(load_config(path, env) if path else default_config(env))


proxy = make_proxy()


async def homepage(request: Request) -> JSONResponse:
    return JSONResponse({"app": "host", "llm_proxy": str(request.url_for("llm", path="/v1"))})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Starlette runs no lifespan for mounted apps: the host enters the proxy's.
    async with proxy.lifespan(app):
        with tuned_gc():  # the collector set for serving: see llm_proxy_mw.gc_tuning
            yield


app = Starlette(
    routes=[Route("/", homepage), Mount("/llm", app=proxy, name="llm")],
    lifespan=lifespan,
)
