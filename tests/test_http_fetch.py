"""The proxy's own fetches: the answer as it came, never a redirect followed, a bounded body,
one deadline for the whole exchange, and httpx's exceptions as ``FetchError`` only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import anyio
import httpx
import pytest

from llm_proxy_mw._http_fetch import MAX_BODY_BYTES, Fetched, HttpFetcher
from llm_proxy_mw.errors import FetchError

pytestmark = pytest.mark.anyio

URL = "https://idp.example/keys"


class Recorder:
    """A mock server answering every request with ``answer``, recording what it was sent."""

    def __init__(self, answer: httpx.Response | Exception) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await request.aread()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def fetcher(server: Recorder, timeout: float = 5.0, **kwargs: int) -> HttpFetcher:
    return HttpFetcher(transport=httpx.MockTransport(server), timeout=timeout, **kwargs)


async def test_an_answer_comes_back_whole_whatever_its_status() -> None:
    server = Recorder(httpx.Response(503, json={"keys": []}))
    fetch = fetcher(server)
    assert await fetch.get(URL) == Fetched(503, b'{"keys":[]}')
    assert [(r.method, str(r.url)) for r in server.requests] == [("GET", URL)]
    await fetch.aclose()


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        (b'{"a": [1, 2]}', {"a": [1, 2]}),
        (b"<html>", None),
        (b"\xff\xfe", None),
        (b"", None),
        (b"[" * 100_000, None),  # nested past what the parser recurses into
    ],
)
async def test_json_is_the_parsed_body_or_none(body: bytes, parsed: object) -> None:
    assert Fetched(200, body).json() == parsed


async def test_a_form_is_posted_url_encoded_asking_for_json() -> None:
    server = Recorder(httpx.Response(200, json={"access_token": "t"}))
    fetch = fetcher(server)
    answer = await fetch.post_form(URL, {"grant_type": "client_credentials", "scope": "a b"})
    assert answer.json() == {"access_token": "t"}
    (request,) = server.requests
    assert request.method == "POST"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["a b"],
    }
    await fetch.aclose()


async def test_a_redirect_is_returned_not_followed() -> None:
    server = Recorder(httpx.Response(302, headers={"location": "https://elsewhere.example/k"}))
    fetch = fetcher(server)
    assert (await fetch.get(URL)).status == 302
    assert [str(r.url) for r in server.requests] == [URL]
    await fetch.aclose()


async def test_the_body_is_read_up_to_the_bound_and_no_further() -> None:
    fits = fetcher(Recorder(httpx.Response(200, content=b"x" * 10)), max_bytes=10)
    assert (await fits.get(URL)).body == b"x" * 10
    past = fetcher(Recorder(httpx.Response(200, content=b"x" * 11)), max_bytes=10)
    with pytest.raises(FetchError, match="^sent more than 10 bytes$"):
        await past.get(URL)
    assert MAX_BODY_BYTES == HttpFetcher(timeout=1.0).max_bytes == 1024 * 1024


async def endless() -> AsyncIterator[bytes]:
    yield b"{"
    await asyncio.Event().wait()  # never set: the server stops sending mid-body
    yield b"}"  # pragma: no cover


async def test_one_deadline_covers_the_whole_exchange_body_included() -> None:
    # httpx's timeouts are per read; a body trickling in must not hold the fetch past it.
    server = Recorder(httpx.Response(200, content=endless()))
    fetch = fetcher(server, timeout=0.05)
    with anyio.fail_after(10), pytest.raises(FetchError, match="^timed out$"):
        await fetch.get(URL)
    await fetch.aclose()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (httpx.ConnectTimeout("lib detail"), "timed out"),
        (httpx.ReadTimeout("lib detail"), "timed out"),
        (httpx.PoolTimeout("lib detail"), "timed out"),
        (httpx.ConnectError("lib detail"), "failed (ConnectError)"),
        (httpx.RemoteProtocolError("lib detail"), "failed (RemoteProtocolError)"),
        (httpx.ReadError("lib detail"), "failed (ReadError)"),
    ],
)
async def test_httpx_failures_become_fetch_errors_without_their_detail(
    failure: Exception, reason: str
) -> None:
    fetch = fetcher(Recorder(failure))
    with pytest.raises(FetchError) as raised:
        await fetch.get(URL)
    assert str(raised.value) == reason
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    await fetch.aclose()


async def test_a_malformed_url_is_a_fetch_error() -> None:
    fetch = fetcher(Recorder(httpx.Response(200)))
    with pytest.raises(FetchError, match=r"^failed \(InvalidURL\)$"):
        await fetch.get("https://idp.example/\x00keys")
    await fetch.aclose()


async def test_the_client_opens_on_first_use_and_again_after_aclose() -> None:
    server = Recorder(httpx.Response(200))
    fetch = fetcher(server)
    assert not fetch.is_open
    await fetch.get(URL)
    assert fetch.is_open
    await fetch.aclose()
    await fetch.aclose()
    assert not fetch.is_open
    assert (await fetch.get(URL)).status == 200
    assert len(server.requests) == 2
    await fetch.aclose()
