"""The example host app of ``examples/app.py``, in FastAPI: the LLM proxy mounted at ``/llm``.

Run it with ``uvicorn examples.fastapi_app:app``. The proxy and its config come from
``examples.app`` (``LLM_PROXY_CONFIG``, else the offline ``echo`` provider plus OpenAI and
Anthropic when their keys are set). FastAPI, like Starlette, runs no lifespan for mounted
apps, so the proxy's lifespan is the host's: its provider pools close on shutdown.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from examples.app import make_proxy

proxy = make_proxy()

app = FastAPI(title="host app", lifespan=proxy.lifespan)
app.mount("/llm", proxy, name="llm")


@app.get("/")
async def homepage(request: Request) -> dict[str, Any]:
    """A route of the host's own, beside the mount."""
    return {"app": "host", "llm_proxy": str(request.url_for("llm", path="/v1"))}
