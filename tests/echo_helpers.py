"""A proxy on the echo provider, and the three clients the echo tests talk to it with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anthropic
import httpx
import httpx2
import openai

from llm_proxy_mw import build_proxy

__all__ = ["EchoClients", "echo_clients", "sse_data"]


@dataclass(frozen=True)
class EchoClients:
    http: httpx.AsyncClient
    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic


@asynccontextmanager
async def echo_clients() -> AsyncIterator[EchoClients]:
    """Raw HTTP, the openai SDK and the anthropic SDK (on httpx2), in process, no retries."""
    proxy = build_proxy({"providers": {"demo": {"kind": "echo", "models": ["echo-1", "echo-2"]}}})
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy), base_url="http://proxy"
        ) as http,
        openai.AsyncOpenAI(
            base_url="http://proxy/v1",
            api_key="x",
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy)),
            max_retries=0,
        ) as openai_client,
        anthropic.AsyncAnthropic(
            base_url="http://proxy",
            api_key="x",
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=proxy)),
            max_retries=0,
        ) as anthropic_client,
    ):
        yield EchoClients(http, openai_client, anthropic_client)


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
