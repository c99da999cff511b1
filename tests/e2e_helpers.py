"""Shared pieces of the end-to-end tests: the example app under real uvicorn, and a fake provider.

The proxy under test is the example host app (``examples/app.py``) exactly as ``make demo``
builds it: a fresh copy of the module is executed with ``LLM_PROXY_CONFIG`` naming a TOML file
written from DESIGN.md's shape, whose provider keys are ``${ENV}`` references to canary
values. It is served by uvicorn (httptools) on loopback; the providers' ``base_url`` point at
a ``FakeProvider`` on a second loopback port. Clients are the official SDKs, with no retries of
their own, over an ``httpx2`` client that records every response byte they receive, so the
tests can prove that no provider key ever reaches a client.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from llm_proxy_mw import LLMProxy
from tests.fakes.servers import UvicornServer

#: The key clients present to the proxy; it must never reach a provider.
CLIENT_KEY = "e2e-client-key-7c1f0a9b3d5e"
#: Provider keys: they must reach the provider, and never a client.
OPENAI_CANARY = "sk-canary-openai-4b2e9d71c0"
ANTHROPIC_CANARY = "sk-ant-canary-anthropic-8f3a6c25d1"
CANARIES = (OPENAI_CANARY, ANTHROPIC_CANARY)

OPENAI_MODEL = "gpt-e2e"
ANTHROPIC_MODEL = "claude-e2e"

#: Every wait on the network is bounded by this (seconds).
TIMEOUT = 10.0

#: Variables that would point the example app or the SDKs elsewhere than the test servers.
_FOREIGN_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_CUSTOM_HEADERS",
    "ANTHROPIC_PROFILE",
)


def provider_toml(
    name: str,
    *,
    kind: str,
    base_url: str,
    key_var: str,
    models: list[str],
    fallbacks: list[str] | None = None,
    retry: dict[str, float] | None = None,
    options: str = "",
) -> str:
    """One ``[providers.<name>]`` table, as a user would write it; ``options``: more of its
    lines, as TOML (``responses_api = false``)."""
    lines = [
        f"[providers.{name}]",
        f'kind = "{kind}"',
        f'base_url = "{base_url}"',
        f'api_key = "${{{key_var}}}"',
        "models = [" + ", ".join(f'"{m}"' for m in models) + "]",
    ]
    if fallbacks:
        lines.append("fallbacks = [" + ", ".join(f'"{f}"' for f in fallbacks) + "]")
    if options:
        lines.append(options)
    if retry:
        lines += ["", f"[providers.{name}.retry]"]
        lines += [f"{key} = {value}" for key, value in retry.items()]
    return "\n".join(lines) + "\n"


def config_toml(*providers: str) -> str:
    """Providers plus the ``[auth]`` table holding the client's key."""
    auth = '[auth]\napi_keys = [{ name = "e2e-client", key = "${E2E_CLIENT_KEY}" }]\n'
    return "\n".join([*providers, auth])


def standard_providers(fake_url: str, *, retry: dict[str, float] | None = None) -> list[str]:
    """An ``openai`` and an ``anthropic`` provider, both pointed at the fake provider."""
    return [
        provider_toml(
            "openai",
            kind="openai",
            base_url=f"{fake_url}/v1",
            key_var="FAKE_OPENAI_KEY",
            models=[OPENAI_MODEL],
            retry=retry,
        ),
        provider_toml(
            "anthropic",
            kind="anthropic",
            base_url=f"{fake_url}/v1",
            key_var="FAKE_ANTHROPIC_KEY",
            models=[ANTHROPIC_MODEL],
            retry=retry,
        ),
    ]


@dataclass
class ProxyServer:
    """The example host app under uvicorn, and the proxy it mounts at ``/llm``."""

    server: UvicornServer
    proxy: LLMProxy

    @property
    def url(self) -> str:
        return self.server.url

    def health_report(self, *, calls: int) -> dict[str, Any]:
        """Each provider's health (what an admin's ``/healthz`` shows) once ``calls`` attempts
        are recorded in all, or after ``TIMEOUT``. A request's last attempt is recorded as
        the proxy's handler returns, which may be after its client had the whole answer."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            report: dict[str, Any] = self.proxy.health_report()["providers"]
            recorded = sum(health["window_calls"] for health in report.values())
            if recorded >= calls or time.monotonic() > deadline:
                return report
            time.sleep(0.005)


def _load_example_app() -> ModuleType:
    """A fresh copy of ``examples.app``: its module-level proxy reads today's environment."""
    spec = importlib.util.find_spec("examples.app")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serve_example_app(config_text: str, config_dir: Path) -> Iterator[ProxyServer]:
    """Write the config, load the example app through ``LLM_PROXY_CONFIG``, serve it."""
    path = config_dir / "llm-proxy.toml"
    path.write_text(config_text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        for name in _FOREIGN_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("LLM_PROXY_CONFIG", str(path))
        patch.setenv("FAKE_OPENAI_KEY", OPENAI_CANARY)
        patch.setenv("FAKE_ANTHROPIC_KEY", ANTHROPIC_CANARY)
        patch.setenv("E2E_CLIENT_KEY", CLIENT_KEY)
        module = _load_example_app()
    with UvicornServer(module.app, http="httptools") as server:
        yield ProxyServer(server, module.proxy)


class _TeeStream(httpx2.SyncByteStream):
    def __init__(self, stream: httpx2.SyncByteStream, sink: list[bytes]) -> None:
        self._stream = stream
        self._sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self._sink.append(chunk)
            yield chunk

    def close(self) -> None:
        self._stream.close()


class RecordingTransport(httpx2.BaseTransport):
    """An ``httpx2`` transport that keeps every response header and body byte it delivers."""

    def __init__(self) -> None:
        # Plain HTTP on loopback: skip loading the CA bundle (a fifth of a second per client).
        self._inner = httpx2.HTTPTransport(verify=False)
        self.received: list[bytes] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        self.received.extend(name + b": " + value for name, value in response.headers.raw)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_TeeStream(response.stream, self.received),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()

    def leaked(self, secrets: tuple[str, ...] = CANARIES) -> list[str]:
        """The secrets found in anything a client received."""
        blob = b"".join(self.received)
        return [s for s in secrets if s.encode() in blob]


def _http_client(recorder: RecordingTransport) -> httpx2.Client:
    return httpx2.Client(transport=recorder, trust_env=False, timeout=TIMEOUT)


def openai_client(
    proxy_url: str, recorder: RecordingTransport, *, api_key: str = CLIENT_KEY
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy_url + "/llm/v1",
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT,
        http_client=_http_client(recorder),
    )


def anthropic_client(
    proxy_url: str, recorder: RecordingTransport, *, api_key: str = CLIENT_KEY
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy_url + "/llm",
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT,
        http_client=_http_client(recorder),
    )


def raw_client(proxy_url: str, *, timeout: float = TIMEOUT) -> httpx.Client:
    """A plain httpx client on the mount, for what the SDKs hide (raw bytes, SSE timing)."""
    return httpx.Client(
        base_url=proxy_url + "/llm",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=timeout,
        trust_env=False,
        verify=False,  # plain HTTP on loopback; skips loading the CA bundle
    )


def chat_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": content}], **extra}


def messages_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }
