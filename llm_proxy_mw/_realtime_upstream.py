"""The provider's side of a realtime session: its websocket URL, headers and handshake.

aiohttp's websocket client is used here and in ``_realtime_relay.py`` only, and its
exceptions become ours in ``open_provider_socket``. Each session gets a client session of
its own: a websocket is never returned to a pool, and a session lasts minutes, so the
few microseconds of a new ``ClientSession`` buy a socket that closes with the session.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp

from llm_proxy_mw.context import Attempt
from llm_proxy_mw.errors import ProxyError, UpstreamProtocolError, outcome_for_status
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.transports._aiohttp import _convert

__all__ = ["INSECURE_KEY_PREFIX", "ProviderSocket", "open_provider_socket", "realtime_url"]

#: The subprotocol that carries an API key from a browser, which cannot set headers (the
#: OpenAI SDK's ``dangerouslyAllowBrowser``); it is the client's credential, never forwarded.
INSECURE_KEY_PREFIX = "openai-insecure-api-key."

ProviderSocket = aiohttp.ClientWebSocketResponse

_WS_SCHEMES = {"https://": "wss://", "http://": "ws://"}


def realtime_url(provider: Provider, route_path: str, query_string: bytes) -> str:
    """The provider's websocket URL for the route: ``wss://`` from an ``https://`` base URL,
    ``ws://`` from ``http://``, the client's query (``model=...``) kept."""
    url = provider.url_for(route_path, query_string)
    for http, ws in _WS_SCHEMES.items():
        if url.startswith(http):
            return ws + url[len(http) :]
    return url


def forwarded_subprotocols(offered: Iterable[str]) -> list[str]:
    """The client's subprotocols but the one carrying its key."""
    return [p for p in offered if not p.startswith(INSECURE_KEY_PREFIX)]


@contextlib.asynccontextmanager
async def open_provider_socket(
    provider: Provider,
    url: str,
    headers: list[tuple[str, str]],
    subprotocols: list[str],
    attempts: list[Attempt],
) -> AsyncIterator[ProviderSocket]:
    """The provider's websocket, open for the ``async with`` block; the attempt is appended
    to ``attempts`` either way.

    A handshake that fails raises a ``ProxyError``; one the provider refused with an HTTP
    status says so, and its attempt carries that status.
    """
    timeout = provider.config.timeout
    async with aiohttp.ClientSession(
        # The handshake's answer is bounded by ``read``; once upgraded, a quiet session is
        # not an error (aiohttp drops the read timeout of a websocket without ``ws_receive``).
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=timeout.connect,
            sock_connect=timeout.connect,
            sock_read=timeout.read,
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    ) as session:
        started = time.perf_counter()
        try:
            socket = await session.ws_connect(
                url,
                headers=headers,
                protocols=subprotocols,
                max_msg_size=0,  # the provider's events, as large as it sends them
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            attempts.append(
                Attempt(
                    provider.name,
                    outcome_for_status(exc.status),
                    exc.status,
                    time.perf_counter() - started,
                )
            )
            raise UpstreamProtocolError(
                f"The provider refused the realtime session with HTTP {exc.status}.",
                provider=provider.name,
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            error: ProxyError = _convert(exc)
            error.provider = provider.name
            attempts.append(Attempt(provider.name, error.code, None, time.perf_counter() - started))
            raise error from None
        attempts.append(Attempt(provider.name, "success", 101, time.perf_counter() - started))
        async with socket:
            yield socket
