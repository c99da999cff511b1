"""A host Starlette app with a route of its own and the LLM proxy mounted at ``/llm``.

Run it with ``make demo`` (or ``uvicorn examples.app:app``). It reads the TOML file named by
``LLM_PROXY_CONFIG``; without one it serves the offline ``echo`` provider, plus OpenAI and
Anthropic when ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` are set. The proxy sits in the host's
route table under a standard ``Mount``, so middleware the host adds (CORS, logging,
OpenTelemetry's ASGI instrumentation, its own auth) sees proxied requests too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

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
