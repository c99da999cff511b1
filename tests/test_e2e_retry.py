"""End to end: retries, fallbacks and disconnects on the real clock, through real sockets.

The unit tests (``test_retry.py``) prove every rule with an injected clock; these prove the
timing-sensitive ones hold through uvicorn, aiohttp and the official SDKs: a ``retry-after``
is obeyed (never early), a retry is invisible to the client but for ``x-llm-proxy-attempts``,
a started stream is never replayed, a client that leaves during a backoff stops the request,
and a dead provider's fallback answers. Each test gets a proxy of its own, so the health
state (budget, breaker) of one cannot leak into the next.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e_helpers import (
    ANTHROPIC_MODEL,
    OPENAI_CANARY,
    OPENAI_MODEL,
    ProxyServer,
    RecordingTransport,
    anthropic_client,
    chat_body,
    config_toml,
    openai_client,
    provider_toml,
    raw_client,
    serve_example_app,
    standard_providers,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer
from tests.fakes.servers import free_port

pytestmark = pytest.mark.e2e

#: The benchmark's bound for a retry after ``retry-after: N`` is N * 1.1 + 0.1 s; a loaded CI
#: machine gets this much more. Early is never allowed.
CI_SLACK = 0.3

#: Retry quickly on statuses without a wait header, so the tests do not sleep for nothing.
FAST_RETRY = {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05}

ServeProxy = Callable[..., ProxyServer]


@pytest.fixture
def serve_proxy(tmp_path: Path) -> Iterator[ServeProxy]:
    """Start the example app for one config; stopped at the end of the test."""
    with contextlib.ExitStack() as stack:

        def serve(*providers: str) -> ProxyServer:
            return stack.enter_context(serve_example_app(config_toml(*providers), tmp_path))

        yield serve


@pytest.fixture
def proxy(serve_proxy: ServeProxy, fake_server: FakeProviderServer) -> ProxyServer:
    return serve_proxy(*standard_providers(fake_server.url, retry=FAST_RETRY))


def chat(client: openai.OpenAI) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "hello"}]
    )


# ---- waits the provider asked for ------------------------------------------------------------


def test_retry_after_is_honoured_never_early(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(Action(status=429, headers={"retry-after": "1"}))
    with openai_client(proxy.url, recorder) as client:
        raw = chat(client)

    assert raw.status_code == 200
    assert raw.headers["x-llm-proxy-attempts"] == "2"
    assert raw.headers["x-llm-proxy-provider"] == "openai"
    assert raw.parse().choices[0].message.content == "fake reply to: hello"
    first, second = provider.wait_for_requests(2)
    waited = second.at - first.at
    assert waited >= 1.0, f"retried {1.0 - waited:.3f} s before the provider allowed"
    assert waited <= 1.0 * 1.1 + 0.1 + CI_SLACK, f"retried {waited:.3f} s after, too late"
    assert second.body == first.body


def test_retry_after_above_the_cap_goes_back_to_the_client(
    serve_proxy: ServeProxy,
    fake_server: FakeProviderServer,
    provider: FakeProvider,
    recorder: RecordingTransport,
) -> None:
    proxy = serve_proxy(
        *standard_providers(fake_server.url, retry={**FAST_RETRY, "max_retry_after": 5})
    )
    provider.script(Action(status=429, headers={"retry-after": "30"}))
    started = time.monotonic()
    with openai_client(proxy.url, recorder) as client, pytest.raises(openai.RateLimitError) as err:
        chat(client)

    assert time.monotonic() - started < 2.0  # not slept
    assert err.value.response.headers["retry-after"] == "30"
    assert err.value.response.headers["x-llm-proxy-attempts"] == "1"
    assert len(provider.requests) == 1


def test_503_then_success_is_retried(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(Action(status=503))
    with openai_client(proxy.url, recorder) as client:
        raw = chat(client)

    assert raw.status_code == 200
    assert raw.headers["x-llm-proxy-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "fake reply to: hello"
    first, second = provider.wait_for_requests(2)
    assert second.body == first.body  # the buffered body is replayed byte for byte
    assert first.headers["authorization"] == second.headers["authorization"]
    assert second.headers["authorization"] == f"Bearer {OPENAI_CANARY}"


def test_anthropic_529_then_success_is_retried(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(Action(status=529))
    with anthropic_client(proxy.url, recorder) as client:
        raw = client.messages.with_raw_response.create(
            model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )

    assert raw.status_code == 200
    assert raw.headers["x-llm-proxy-attempts"] == "2"
    assert raw.parse().content[0].text == "fake reply to: hi"  # type: ignore[union-attr]
    assert len(provider.wait_for_requests(2)) == 2


# ---- once the response started, nothing is retried -------------------------------------------


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_stream_cut_after_it_started_is_not_retried(
    sdk: str, proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    # The second action would succeed: a proxy that replays a started stream would use it.
    provider.script(Action(cut_after=2), Action())
    if sdk == "openai":
        with openai_client(proxy.url, recorder) as client, pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(
                model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                pass
    else:
        with anthropic_client(proxy.url, recorder) as client, pytest.raises(anthropic.APIError):
            with client.messages.stream(
                model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                stream.until_done()

    with pytest.raises(TimeoutError):
        provider.wait_for_requests(2, timeout=0.5)
    assert provider.pending == 1


def test_cut_stream_reports_one_attempt_and_an_error_event(
    proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(cut_after=3), Action())
    with raw_client(proxy.url) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp:
            body = b"".join(resp.iter_raw())

    assert resp.status_code == 200
    assert resp.headers["x-llm-proxy-attempts"] == "1"
    last = [e for e in body.split(b"\n\n") if e.strip()][-1].strip()
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "protocol_error"
    assert len(provider.requests) == 1


# ---- the client leaves during a backoff ------------------------------------------------------


def test_client_disconnect_during_backoff_stops_the_request(
    proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(status=429, headers={"retry-after": "2"}), Action())
    with raw_client(proxy.url, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=chat_body())

    (first,) = provider.wait_for_requests(1)
    # The retry was due 2 s after the first attempt; give it a full extra second.
    with pytest.raises(TimeoutError):
        provider.wait_for_requests(2, timeout=max(0.0, first.at + 3.0 - time.monotonic()))
    assert provider.pending == 1


# ---- a dead provider and its fallback --------------------------------------------------------


def test_dead_provider_falls_back(
    serve_proxy: ServeProxy,
    fake_server: FakeProviderServer,
    provider: FakeProvider,
    recorder: RecordingTransport,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    proxy = serve_proxy(
        provider_toml(
            "primary",
            kind="openai",
            base_url=dead,
            key_var="FAKE_OPENAI_KEY",
            models=[OPENAI_MODEL],
            fallbacks=["backup"],
        ),
        # The backup serves another model, so only the fallback rule can route to it.
        provider_toml(
            "backup",
            kind="openai",
            base_url=f"{fake_server.url}/v1",
            key_var="FAKE_OPENAI_KEY",
            models=["gpt-backup-only"],
        ),
    )
    with openai_client(proxy.url, recorder) as client:
        raw = chat(client)

    assert raw.status_code == 200
    assert raw.headers["x-llm-proxy-provider"] == "backup"
    assert raw.headers["x-llm-proxy-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "fake reply to: hello"
    (request,) = provider.wait_for_requests(1)
    assert request.json["model"] == OPENAI_MODEL
    assert request.headers["authorization"] == f"Bearer {OPENAI_CANARY}"

    report = proxy.health_report(calls=2)  # what an admin's /healthz shows
    assert report["primary"]["window_calls"] == 1
    assert report["primary"]["success_ratio"] == 0.0
    assert report["backup"]["window_calls"] == 1
    assert report["backup"]["success_ratio"] == 1.0
