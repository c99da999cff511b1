"""A host Starlette app with its own routes that mounts the LLM proxy at ``/llm``.

Run it with ``make demo`` (or ``uvicorn examples.app:app``). It reads the TOML file named by
``LLM_PROXY_CONFIG``; without one it serves the offline ``echo`` provider, plus OpenAI and
Anthropic when ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` are set.
"""

from __future__ import annotations

import gc

# Loading the app allocates ~90,000 objects (pydantic builds the config's validators, aiohttp
# its TLS contexts, ...), and with the collector on CPython walks them ~130 times before the
# first request: ~0.1 s of a ~0.6 s start-up. Paused until the end of this module, which
# freezes what it built. (The imports below come after this on purpose: ruff's E402 is off
# for this file.)
_collector_was_on = gc.isenabled()
gc.disable()

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from llm_proxy_mw import LLMProxy, build_proxy, load_config, mount
from llm_proxy_mw.logging_filters import RedactQuerySecrets


def redact_logged_urls() -> None:
    """Keep ``?key=``, ``?code=``, ``?state=`` and other query secrets out of uvicorn's logs:
    its access log and its log of refused websocket handshakes quote each URL in full."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuerySecrets) for f in logger.filters):
            logger.addFilter(RedactQuerySecrets())


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
    async with proxy.lifespan(app):
        # What the proxy's start-up built (pools, store) joins what the import froze.
        gc.freeze()
        # A proxy keeps tens of objects alive per request in flight. At CPython's default
        # first-generation threshold (700 new objects) hundreds of concurrent requests make
        # the collector run every few requests and walk all of them again: 10-15% of the
        # CPU at 256 connections. The proxy frees its objects without the collector's help
        # (no reference cycles per request), so collecting less often costs no memory.
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 10, 10)
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)


host = Starlette(
    routes=[Route("/", homepage), Mount("/llm", app=proxy, name="llm")],
    lifespan=lifespan,
)

#: ``/llm/...`` goes straight to the proxy, in front of the host's router (which keeps its
#: Mount for ``url_for``): a Starlette Mount alone costs each proxied request ~20 µs more.
app = mount(host, "/llm", proxy)

# Everything loaded and built above lives as long as the process: out of the collector's
# generations, later collections never walk it again.
gc.freeze()
if _collector_was_on:
    gc.enable()
