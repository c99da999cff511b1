"""Two replicas of the example app (separate uvicorn processes) on one real Redis: a
principal's rpm, tpm, concurrency and budget hold across both, its tokens settled with the
real usage."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from tests.test_auth_replicas import ADMIN, USER, Replicas, serve_replicas
from tests.test_auth_replicas import _config as auth_config

pytestmark = pytest.mark.e2e

#: About 1,000 prompt tokens by the echo provider's count; the reservation is the body's
#: bytes / 4 (about 1,260) plus ``max_tokens``.
LONG = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "word " * 1000}]}
SHORT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SETTLE_SECONDS = 10.0


class Shared(Replicas):
    redis_url: str

    def wait_settled(self, principal: str, seconds_of_tokens: float) -> None:
        """Until the principal's token bucket owes at most ``seconds_of_tokens`` (a request
        is settled after its client had the answer, as the replica's handler returns)."""
        key = f"llm_proxy_mw:limits:{{{principal}}}:tk"
        deadline = time.monotonic() + SETTLE_SECONDS
        with redis.Redis.from_url(self.redis_url) as client:
            while time.monotonic() < deadline:
                seconds, micros = client.time()
                if float(client.get(key) or 0) - seconds - micros / 1e6 <= seconds_of_tokens:
                    return
                time.sleep(0.01)
        pytest.fail(f"{principal}'s request was not settled in {SETTLE_SECONDS}s")


def _config(redis_url: str) -> str:
    """The auth replicas' config (root an admin, alice not), with limits for both."""
    return auth_config(redis_url) + (
        '\n[limits.principals."api_key:alice"]\nrpm = 3\n\n'
        '[limits.principals."api_key:root"]\ntpm = 3000\n'
    )


def _serve_shared(
    tmp_path_factory: pytest.TempPathFactory, name: str, config_for: Callable[[str], str]
) -> Iterator[Shared]:
    """Two replicas configured by ``config_for`` on a fresh Redis, with its url."""
    with serve_replicas(tmp_path_factory.mktemp(name), config_for) as (both, url):
        shared = Shared(both.a, both.b)
        shared.redis_url = url
        yield shared


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from _serve_shared(tmp_path_factory, "limit-replicas", _config)


def test_rpm_holds_across_both_replicas(replicas: Shared) -> None:
    statuses = [
        client.post("/v1/chat/completions", json=SHORT, headers=USER).status_code
        for client in (replicas.a, replicas.b, replicas.a, replicas.b, replicas.a)
    ]
    # Three a minute in all, not three on each: one more passes every 20 s.
    assert statuses == [200, 200, 200, 429, 429]


def test_tpm_holds_across_both_replicas_with_the_real_usage(replicas: Shared) -> None:
    first = replicas.a.post("/v1/chat/completions", json=LONG, headers=ADMIN)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] == 1010
    replicas.wait_settled("api_key:root", 1010 * 60 / 3000 + 0.5)
    second = replicas.b.post("/v1/chat/completions", json=LONG, headers=ADMIN)
    assert second.status_code == 200
    # b saw a's real usage (1,010), not its reservation, and reserved its own.
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 3000 - 1010 - 1300 < remaining < 3000 - 1010 - 1200
    replicas.wait_settled("api_key:root", 2020 * 60 / 3000 + 0.5)
    third = replicas.a.post("/v1/chat/completions", json=LONG, headers=ADMIN)
    assert third.status_code == 429  # 2,020 used: about 980 left, 1,270 asked
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 10


def _held_config(redis_url: str) -> str:
    """alice may have one request in flight; root has a budget that one request spends."""
    return auth_config(redis_url) + (
        '\n[limits.principals."api_key:alice"]\nconcurrency = 1\n\n'
        '[limits.principals."api_key:root"]\nbudget_usd = 0.000001\nbudget_period = "total"\n\n'
        '[pricing."m"]\ninput = 1000\noutput = 1000\n'
    )


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    yield from _serve_shared(tmp_path_factory, "held-replicas", _held_config)


def _in_flight(redis_url: str, principal: str, count: int) -> None:
    """Until ``count`` requests of ``principal`` hold a concurrency slot (bounded)."""
    key = f"llm_proxy_mw:limits:{{{principal}}}:cc"
    deadline = time.monotonic() + SETTLE_SECONDS
    with redis.Redis.from_url(redis_url) as client:
        while time.monotonic() < deadline:
            if client.zcard(key) == count:
                return
            time.sleep(0.01)
    pytest.fail(f"{principal} never had {count} requests in flight")


def test_concurrency_holds_across_both_replicas(held: Shared) -> None:
    body = json.dumps(SHORT).encode()
    url = httpx.URL(str(held.a.base_url))
    with socket.create_connection((url.host, url.port), timeout=10) as slow:
        # Headers now, the body later: the request holds its slot on replica a meanwhile.
        head = (
            f"POST /llm/v1/chat/completions HTTP/1.1\r\nhost: {url.host}\r\n"
            f"authorization: {USER['authorization']}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        slow.sendall(head.encode())
        _in_flight(held.redis_url, "api_key:alice", 1)
        refused = held.b.post("/v1/chat/completions", json=SHORT, headers=USER)
        slow.sendall(body)
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert answer.startswith(b"HTTP/1.1 200")
    _in_flight(held.redis_url, "api_key:alice", 0)
    assert held.b.post("/v1/chat/completions", json=SHORT, headers=USER).status_code == 200


def test_a_budget_spent_on_one_replica_is_spent_on_the_other(held: Shared) -> None:
    first = held.a.post("/v1/chat/completions", json=SHORT, headers=ADMIN)
    assert first.status_code == 200  # admitted while under the budget; it costs more
    refused = held.b.post("/v1/chat/completions", json=SHORT, headers=ADMIN)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-should-retry"] == "false"
