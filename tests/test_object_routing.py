"""Objects remember their provider, end to end: the example app under uvicorn, the official
``openai`` SDK, and two fake OpenAI providers that each keep their own files, batches and
responses. A follow-up naming an object reaches the provider that created it; two replicas
sharing Redis know each other's objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from tests.e2e_helpers import (
    TIMEOUT,
    ProxyServer,
    RecordingTransport,
    config_toml,
    openai_client,
    serve_example_app,
)
from tests.fakes.object_provider import ObjectProvider, TwoProviders, two_providers
from tests.fakes.redis_server import redis_server

PIN = {"x-llm-proxy-provider": "second"}
LINES = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


@pytest.fixture(scope="module")
def servers() -> Iterator[TwoProviders]:
    with two_providers() as found:
        yield found


@pytest.fixture
def fakes(servers: TwoProviders) -> tuple[ObjectProvider, ObjectProvider]:
    servers.forget()
    return servers.first, servers.second


def config(servers: TwoProviders, store_url: str) -> str:
    return config_toml(*servers.tables(), f'[store]\nurl = "{store_url}"\n')


@pytest.fixture
def proxy(servers: TwoProviders, tmp_path: Path) -> Iterator[ProxyServer]:
    with serve_example_app(config(servers, f"sqlite:///{tmp_path}/store.db"), tmp_path) as server:
        yield server


def test_files_and_batches_created_on_the_second_provider_stay_there(
    proxy: ProxyServer, fakes: tuple[ObjectProvider, ObjectProvider], recorder: RecordingTransport
) -> None:
    first, second = fakes
    with openai_client(proxy.url, recorder) as client:
        created = client.files.create(file=("in.jsonl", LINES), purpose="batch", extra_headers=PIN)
        assert created.id.startswith("file-second-")

        assert client.files.retrieve(created.id).filename == "in.jsonl"
        assert client.files.content(created.id).content == LINES
        batch = client.batches.create(
            input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.id.startswith("batch-second-")
        assert client.batches.retrieve(batch.id).input_file_id == created.id
        assert client.batches.cancel(batch.id).status == "cancelling"
        assert client.files.delete(created.id).deleted

    assert first.seen == []
    assert [path for _, path in second.seen] == [
        "/v1/files",
        f"/v1/files/{created.id}",
        f"/v1/files/{created.id}/content",
        "/v1/batches",
        f"/v1/batches/{batch.id}",
        f"/v1/batches/{batch.id}/cancel",
        f"/v1/files/{created.id}",
    ]


def test_unknown_ids_and_lists_go_to_the_first_provider(
    proxy: ProxyServer, fakes: tuple[ObjectProvider, ObjectProvider], recorder: RecordingTransport
) -> None:
    first, second = fakes
    with openai_client(proxy.url, recorder) as client:
        client.files.create(file=("in.jsonl", LINES), purpose="batch", extra_headers=PIN)
        second.seen.clear()

        assert client.files.list().data == []  # the first provider holds none of them
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve("file-nobody-knows")
    assert first.seen == [("GET", "/v1/files"), ("GET", "/v1/files/file-nobody-knows")]
    assert second.seen == []


def test_a_response_continues_where_its_previous_one_lives(
    proxy: ProxyServer, fakes: tuple[ObjectProvider, ObjectProvider], recorder: RecordingTransport
) -> None:
    first, second = fakes
    with openai_client(proxy.url, recorder) as client:
        opening = client.responses.create(model="gpt-second", input="hello")
        assert opening.output_text == "second answers"

        # Another provider's model: the conversation's state is where it started.
        follow_up = client.responses.create(
            model="gpt-first", input="and then?", previous_response_id=opening.id
        )
        assert follow_up.previous_response_id == opening.id
        assert client.responses.retrieve(follow_up.id).id == follow_up.id
    assert first.seen == []
    assert len(second.seen) == 3


def test_replicas_sharing_redis_know_each_others_objects(
    servers: TwoProviders,
    fakes: tuple[ObjectProvider, ObjectProvider],
    recorder: RecordingTransport,
    tmp_path: Path,
) -> None:
    first, second = fakes
    with redis_server() as server:
        shared = config(servers, server.url)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            serve_example_app(shared, tmp_path / "a") as replica_a,
            serve_example_app(shared, tmp_path / "b") as replica_b,
        ):
            with openai_client(replica_a.url, recorder) as client:
                created = client.files.create(
                    file=("in.jsonl", LINES), purpose="batch", extra_headers=PIN
                )
            wait_for_key(server.url, f"llm_proxy_mw:objects:{created.id}")
            with openai_client(replica_b.url, recorder) as client:
                assert client.files.content(created.id).content == LINES
    assert first.seen == []
    assert second.seen == [("POST", "/v1/files"), ("GET", f"/v1/files/{created.id}/content")]


def wait_for_key(url: str, key: str) -> None:
    """Until replica A's record, written beside its answer, is in Redis."""
    deadline = time.monotonic() + TIMEOUT
    with redis.Redis.from_url(url) as client:
        while not client.exists(key):
            assert time.monotonic() < deadline, f"{key} was never recorded"
            time.sleep(0.01)
