"""End to end: every token of every proxied request is counted, whatever the API, JSON or
stream, passed through or translated. The official SDKs call the example app on uvicorn;
the scripted fake answers with cache reads and writes; what a user sees is the
``llm_proxy_tokens_total`` counter of each kind (the request's ``ctx.usage``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from llm_proxy_mw._usage import BYTES_PER_TOKEN
from tests.e2e_helpers import (
    TIMEOUT,
    ProxyServer,
    RecordingTransport,
    anthropic_client,
    openai_client,
    raw_client,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer, StreamHold, Turn
from tests.translation_e2e_helpers import (
    ANTHROPIC_MODEL,
    CHAT_ONLY_MODEL,
    OPENAI_MODEL,
    USAGE,
    translation_proxy,
)

pytestmark = pytest.mark.e2e

KINDS = ("prompt", "completion", "cache_read", "cache_write", "reasoning")
#: ``USAGE`` as OpenAI counts it: the prompt holds the cache reads and writes.
COUNTED = {"prompt": 15, "completion": 5, "cache_read": 3, "cache_write": 2, "reasoning": 0}
HELLO = "Hello there, how are you today?"

proxy = pytest.fixture(scope="module", name="proxy")(translation_proxy)


@pytest.fixture
def sdks(
    proxy: ProxyServer, recorder: RecordingTransport
) -> Iterator[tuple[openai.OpenAI, anthropic.Anthropic]]:
    with openai_client(proxy.url, recorder) as oai, anthropic_client(proxy.url, recorder) as ant:
        yield oai, ant


class Tokens:
    """The token counters of one (provider, model), read as the test goes."""

    def __init__(self, proxy: ProxyServer, provider: str, model: str) -> None:
        self._registry = proxy.proxy.parts.metrics.registry
        self._labels = {"provider": provider, "model": model}
        self._before = self.now()

    def now(self) -> dict[str, float]:
        get = self._registry.get_sample_value
        return {
            kind: get("llm_proxy_tokens_total", {**self._labels, "kind": kind}) or 0.0
            for kind in KINDS
        }

    def added(self, until: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        """What was counted since, once ``until`` holds for it (bounded: Metrics records a
        request as its handler returns, which may be after the client had the answer)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            now = self.now()
            added = {kind: now[kind] - self._before[kind] for kind in KINDS}
            if until(added) or time.monotonic() > deadline:
                return added
            time.sleep(0.005)

    def counted(self, expected: dict[str, float]) -> dict[str, float]:
        return self.added(lambda added: added == expected)


def chat(oai: openai.OpenAI, model: str, stream: bool) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": HELLO}
    ]
    if stream:
        chunks = list(oai.chat.completions.create(model=model, messages=messages, stream=True))
        # The client did not ask for the usage chunk, and got none.
        assert all(chunk.usage is None and chunk.choices for chunk in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Sunny."
    else:
        answer = oai.chat.completions.create(model=model, messages=messages)
        assert answer.choices[0].message.content == "Sunny."


def messages(ant: anthropic.Anthropic, model: str, stream: bool) -> None:
    ask: list[anthropic.types.MessageParam] = [{"role": "user", "content": HELLO}]
    if stream:
        with ant.messages.stream(model=model, max_tokens=64, messages=ask) as events:
            assert events.get_final_text() == "Sunny."
    else:
        answer = ant.messages.create(model=model, max_tokens=64, messages=ask)
        assert answer.content[0].type == "text" and answer.content[0].text == "Sunny."


def responses(oai: openai.OpenAI, model: str, stream: bool) -> None:
    if stream:
        events = list(oai.responses.create(model=model, input=HELLO, store=False, stream=True))
        assert events[-1].type == "response.completed"
    else:
        answer = oai.responses.create(model=model, input=HELLO, store=False)
        assert answer.output_text == "Sunny."


# (client API, model, the provider that serves it): passed through when the provider
# speaks the client's API, else translated.
CASES = [
    pytest.param("chat", OPENAI_MODEL, "openai", id="chat"),
    pytest.param("chat", ANTHROPIC_MODEL, "anthropic", id="chat-to-messages"),
    pytest.param("messages", ANTHROPIC_MODEL, "anthropic", id="messages"),
    pytest.param("messages", OPENAI_MODEL, "openai", id="messages-to-chat"),
    pytest.param("responses", OPENAI_MODEL, "openai", id="responses"),
    pytest.param("responses", ANTHROPIC_MODEL, "anthropic", id="responses-to-messages"),
    pytest.param("responses", CHAT_ONLY_MODEL, "openai-chat", id="responses-to-chat"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("api", "model", "name"), CASES)
def test_every_count_of_every_api_is_counted(
    proxy: ProxyServer,
    sdks: tuple[openai.OpenAI, anthropic.Anthropic],
    provider: FakeProvider,
    api: str,
    model: str,
    name: str,
    stream: bool,
) -> None:
    oai, ant = sdks
    tokens = Tokens(proxy, name, model)
    provider.script(Action(turn=Turn(text="Sunny.", usage=USAGE)))
    if api == "chat":
        chat(oai, model, stream)
    elif api == "messages":
        messages(ant, model, stream)
    else:
        responses(oai, model, stream)
    assert tokens.counted(COUNTED) == COUNTED


def _normalised(stream: bytes) -> bytes:
    """The stream without what the fake makes up per request (its id and time)."""
    stream = re.sub(rb'"id":"chatcmpl-[0-9a-f]+"', b'"id":"-"', stream)
    return re.sub(rb'"created":\d+', b'"created":0', stream)


def test_the_usage_the_proxy_asked_for_is_not_in_the_clients_stream(
    proxy: ProxyServer, fake_server: FakeProviderServer, provider: FakeProvider
) -> None:
    body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": HELLO}]}
    body["stream"] = True
    turn = Turn(text="Sunny and warm today.", usage=USAGE)
    tokens = Tokens(proxy, "openai", OPENAI_MODEL)
    provider.script(Action(turn=turn), Action(turn=turn))
    with raw_client(proxy.url) as client:
        proxied = client.post("/v1/chat/completions", json=body)
    with httpx.Client(base_url=fake_server.url, trust_env=False, timeout=TIMEOUT) as direct:
        unproxied = direct.post("/v1/chat/completions", json=body)
    asked = provider.wait_for_requests(2)[0].json
    assert asked["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in proxied.content
    assert _normalised(proxied.content) == _normalised(unproxied.content)
    assert tokens.counted(COUNTED) == COUNTED


def test_a_client_that_asked_for_usage_gets_it(proxy: ProxyServer, provider: FakeProvider) -> None:
    body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": HELLO}]}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    tokens = Tokens(proxy, "openai", OPENAI_MODEL)
    provider.script(Action(turn=Turn(text="Sunny.", usage=USAGE)))
    with raw_client(proxy.url) as client:
        answer = client.post("/v1/chat/completions", json=body)
    *_, last, done = answer.content.split(b"\n\n")[:-1]
    assert done == b"data: [DONE]"
    usage_chunk = json.loads(last.removeprefix(b"data: "))
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens"] == 15
    assert provider.wait_for_requests(1)[0].json["stream_options"] == {"include_usage": True}
    assert tokens.counted(COUNTED) == COUNTED


def _raw_body(model: str) -> bytes:
    """A request body of a known size: its input tokens are estimated from it."""
    return (
        b'{"model":"' + model.encode() + b'","max_tokens":64,"stream":true,'
        b'"messages":[{"role":"user","content":"' + b"word " * 100 + b'"}]}'
    )


@pytest.mark.parametrize(
    ("path", "model", "name"),
    [
        pytest.param("/v1/chat/completions", OPENAI_MODEL, "openai", id="chat"),
        pytest.param("/v1/chat/completions", ANTHROPIC_MODEL, "anthropic", id="chat-to-messages"),
        pytest.param("/v1/responses", OPENAI_MODEL, "openai", id="responses"),
    ],
)
def test_a_stream_the_provider_cut_is_charged_its_input_and_the_output_seen(
    proxy: ProxyServer, provider: FakeProvider, path: str, model: str, name: str
) -> None:
    body = _raw_body(model)
    tokens = Tokens(proxy, name, model)
    long_turn = Turn(text="one two three four five six seven eight", usage=USAGE)
    provider.script(Action(turn=long_turn, cut_after=4))
    with raw_client(proxy.url) as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200
    # Every kind the request adds, read one by one while it may be counted: wait for all.
    kinds = KINDS[:4] if name == "anthropic" else KINDS[:2]
    added = tokens.added(lambda added: all(added[kind] for kind in kinds))
    if name == "anthropic":  # message_start said the input
        assert added["prompt"] == COUNTED["prompt"], added
    else:  # the usage comes last: the input is estimated from the request
        assert added["prompt"] == len(body) // BYTES_PER_TOKEN, added
    # One token per read of the answer: at least one, at most one per event sent (4), and
    # the error event that ends the client's stream.
    assert 1 <= added["completion"] <= 4 + 1, added


def test_a_stream_whose_client_left_is_charged_its_input_and_the_output_seen(
    proxy: ProxyServer, provider: FakeProvider
) -> None:
    body = _raw_body(ANTHROPIC_MODEL)
    tokens = Tokens(proxy, "anthropic", ANTHROPIC_MODEL)
    with StreamHold(after=3) as hold:
        provider.script(Action(turn=Turn(text="one two three four", usage=USAGE), hold=hold))
        with (
            raw_client(proxy.url) as client,
            client.stream(
                "POST",
                "/v1/messages",
                content=body,
                headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
            ) as answer,
        ):
            assert answer.status_code == 200
            assert hold.wait_reached(TIMEOUT)
            next(answer.iter_raw())  # the client saw the start, then leaves
        # Counted while the provider still holds the rest back.
        added = tokens.added(lambda added: all(added[kind] for kind in KINDS[:4]))
    assert added["prompt"] == COUNTED["prompt"]
    assert added["cache_read"] == COUNTED["cache_read"]
    assert 1 <= added["completion"] <= 3
