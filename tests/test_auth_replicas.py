"""Two replicas sharing one real Redis: tokens and revocations bind both at once.

Each replica is a separate uvicorn PROCESS running the example host app (``examples.app``,
the proxy mounted at ``/llm``) configured through ``LLM_PROXY_CONFIG`` with
``[store] url = "redis://..."``. Both start together against an empty Redis, so they race
to create the signing key; they must end up with the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from llm_proxy_mw.auth import Principal
from llm_proxy_mw.auth._token_owners import LoginSession, owner_check
from llm_proxy_mw.auth._tokens import TokenService
from llm_proxy_mw.auth.token_store._redis import RedisTokenStore
from llm_proxy_mw.config import AuthConfig, TokensConfig
from llm_proxy_mw.errors import TokenGrantError
from tests.fakes.processes import stop_process
from tests.fakes.redis_server import redis_server
from tests.fakes.servers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "replica-admin-canary-0123456789"
USER_KEY = "replica-user-canary-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STARTUP_SECONDS = 30.0
PROPAGATION_SECONDS = 1.0


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ADMIN, USER = bearer(ADMIN_KEY), bearer(USER_KEY)


@dataclass
class Replicas:
    a: httpx.Client
    b: httpx.Client


def _config(redis_url: str) -> str:
    return (
        '[providers.echo]\nkind = "echo"\n\n'
        "[auth]\napi_keys = [\n"
        '  { name = "root", key = "${REPLICA_ADMIN_KEY}", admin = true },\n'
        '  { name = "alice", key = "${REPLICA_USER_KEY}" },\n]\n\n'
        f'[store]\nurl = "{redis_url}"\n'
    )


def _spawn(port: int, config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env |= {
        "LLM_PROXY_CONFIG": str(config),
        "REPLICA_ADMIN_KEY": ADMIN_KEY,
        "REPLICA_USER_KEY": USER_KEY,
    }
    argv = [sys.executable, "-m", "uvicorn", "examples.app:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"replica exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/llm/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"replica at {url} did not start in {STARTUP_SECONDS}s:\n{log.read_text()}")


@contextlib.contextmanager
def serve_replicas(
    directory: Path, config_for: Callable[[str], str]
) -> Iterator[tuple[Replicas, str]]:
    """Two replicas of the example app on a fresh Redis, configured by ``config_for(its
    url)``: their clients and the Redis url."""
    with redis_server() as redis:
        config = directory / "llm-proxy.toml"
        config.write_text(config_for(redis.url), encoding="utf-8")
        ports = [free_port(), free_port()]
        processes = [_spawn(p, config, directory / f"replica-{p}.log") for p in ports]
        try:
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for process, url, port in zip(processes, urls, ports, strict=True):
                _wait_ready(process, url, directory / f"replica-{port}.log")
            with (
                httpx.Client(base_url=f"{urls[0]}/llm", timeout=10) as a,
                httpx.Client(base_url=f"{urls[1]}/llm", timeout=10) as b,
            ):
                yield Replicas(a, b), redis.url
        finally:
            for process in processes:
                stop_process(process)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    with serve_replicas(tmp_path_factory.mktemp("replicas"), _config) as (replicas, _):
        yield replicas


def _mint(client: httpx.Client) -> dict[str, str]:
    response = client.post("/auth/tokens", json={"name": "replicated"}, headers=USER)
    assert response.status_code == 201, response.text
    minted: dict[str, str] = response.json()
    return minted


def _status(client: httpx.Client, token: str) -> int:
    return client.post("/v1/chat/completions", json=CHAT, headers=bearer(token)).status_code


def _refused_within(client: httpx.Client, token: str, bound: float) -> float:
    """Poll until the token is refused; how long it took (fails past ``bound``)."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < bound:
        if _status(client, token) == 401:
            return elapsed
        time.sleep(0.01)
    pytest.fail(f"the revoked token was still accepted after {bound}s")


def test_replicas_share_one_signing_key(replicas: Replicas) -> None:
    jwks_a = replicas.a.get("/.well-known/jwks.json").json()
    jwks_b = replicas.b.get("/.well-known/jwks.json").json()
    assert jwks_a == jwks_b
    assert "d" not in jwks_a["keys"][0]


def test_a_token_minted_on_a_works_on_b(replicas: Replicas) -> None:
    pair = _mint(replicas.a)
    assert _status(replicas.b, pair["access_token"]) == 200
    listed = replicas.b.get("/auth/tokens", headers=USER).json()["data"]
    assert pair["id"] in {family["id"] for family in listed}


def test_revoked_on_a_is_refused_on_b_within_a_second(replicas: Replicas) -> None:
    pair = _mint(replicas.a)
    assert _status(replicas.b, pair["access_token"]) == 200  # B has verified and cached it
    deleted = replicas.a.delete(f"/auth/tokens/{pair['id']}", headers=USER)
    assert deleted.status_code == 200
    _refused_within(replicas.b, pair["access_token"], PROPAGATION_SECONDS)
    assert _status(replicas.a, pair["access_token"]) == 401


def test_refresh_reuse_on_b_revokes_the_family_on_a(replicas: Replicas) -> None:
    pair = _mint(replicas.a)
    form = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    rotated = replicas.a.post("/auth/token", data=form)
    assert rotated.status_code == 200
    new_access = rotated.json()["access_token"]
    assert _status(replicas.a, new_access) == 200  # A has it cached
    reused = replicas.b.post("/auth/token", data=form)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    _refused_within(replicas.a, new_access, PROPAGATION_SECONDS)


def test_revocation_through_rfc7009_on_b_binds_a(replicas: Replicas) -> None:
    pair = _mint(replicas.a)
    assert _status(replicas.a, pair["access_token"]) == 200
    revoked = replicas.b.post("/auth/revoke", data={"token": pair["access_token"]}, headers=USER)
    assert revoked.status_code == 200
    _refused_within(replicas.a, pair["access_token"], PROPAGATION_SECONDS)
    introspected = replicas.a.post(
        "/auth/introspect", data={"token": pair["refresh_token"]}, headers=ADMIN
    )
    assert introspected.json() == {"active": False}


# -- the Redis store in-process: races and a lost push -------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as redis:
        yield redis.url


@pytest.mark.anyio
async def test_replicas_racing_for_the_signing_key_share_one(redis_url: str) -> None:
    services = [TokenService(TokensConfig(), RedisTokenStore(redis_url)) for _ in range(4)]
    try:
        keys = await asyncio.gather(*(service.ready() for service in services))
        assert len({key.kid for key in keys}) == 1
    finally:
        for service in services:
            await service.stop()


@pytest.mark.anyio
async def test_concurrent_rotations_on_redis_rotate_once(redis_url: str) -> None:
    service = TokenService(TokensConfig(), RedisTokenStore(redis_url))
    try:
        pair = await service.mint(Principal(name="alice", kind="api_key"), "ci", None, False)
        outcomes = await asyncio.gather(
            *(service.refresh(pair.refresh_token) for _ in range(8)), return_exceptions=True
        )
        assert sum(not isinstance(o, Exception) for o in outcomes) == 1
        assert all(isinstance(o, TokenGrantError) for o in outcomes if isinstance(o, Exception))
        assert pair.family.id in service.revoked
        assert (await service.family(pair.family.id)) is not None
    finally:
        await service.stop()


@pytest.mark.anyio
async def test_a_lost_push_is_caught_by_the_periodic_reload(redis_url: str) -> None:
    first = TokenService(TokensConfig(), RedisTokenStore(redis_url))
    second = TokenService(TokensConfig(), RedisTokenStore(redis_url), resync_interval=0.2)
    await first.start()
    await second.start()
    try:
        pair = await first.mint(Principal(name="alice", kind="api_key"), "ci", None, False)
        assert second.authenticator.verify(pair.access_token) is not None
        # Revoke as the store's script does, but without the push: as if it were lost.
        raw = Redis.from_url(redis_url, decode_responses=True)
        prefix = "llm_proxy_mw:tokens:"
        await raw.hset(f"{prefix}family:{pair.family.id}", "revoked", time.time())
        await raw.zadd(f"{prefix}revoked", {pair.family.id: pair.family.expires})
        await raw.aclose()
        for _ in range(60):  # 3 s at most
            if second.authenticator.verify(pair.access_token) is None:
                break
            await anyio.sleep(0.05)
        else:
            pytest.fail("the periodic reload did not pick up the revocation")
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.anyio
async def test_a_push_reaches_another_replica_at_once(redis_url: str) -> None:
    first = TokenService(TokensConfig(), RedisTokenStore(redis_url))
    second = TokenService(TokensConfig(), RedisTokenStore(redis_url), resync_interval=60)
    await first.start()
    await second.start()
    try:
        pair = await first.mint(Principal(name="alice", kind="api_key"), "ci", None, False)
        assert second.authenticator.verify(pair.access_token) is not None
        assert (found := await first.family(pair.family.id)) is not None
        await first.revoke(found)
        assert first.authenticator.verify(pair.access_token) is None  # at once, in-process
        await _until_refused(second, pair.access_token, PROPAGATION_SECONDS)
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.anyio
async def test_a_dropped_subscription_reloads_once_it_is_back(redis_url: str) -> None:
    first = TokenService(TokensConfig(), RedisTokenStore(redis_url))
    second = TokenService(TokensConfig(), RedisTokenStore(redis_url), resync_interval=60)
    await first.start()
    await second.start()
    raw = Redis.from_url(redis_url, decode_responses=True)
    try:
        pair = await first.mint(Principal(name="alice", kind="api_key"), "ci", None, False)
        assert second.authenticator.verify(pair.access_token) is not None
        await anyio.sleep(0.2)  # both listen by now
        await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # Revoked while no one listens: the push is lost, the reload must catch it.
        prefix = "llm_proxy_mw:tokens:"
        await raw.hset(f"{prefix}family:{pair.family.id}", "revoked", time.time())
        await raw.zadd(f"{prefix}revoked", {pair.family.id: pair.family.expires})
        await _until_refused(second, pair.access_token, 5.0)
    finally:
        await raw.aclose()
        await first.stop()
        await second.stop()


SCOPE: dict[str, Any] = {"type": "http", "headers": []}


def _keys(*names: str) -> AuthConfig:
    return AuthConfig.model_validate(
        {"api_keys": [{"name": n, "key": f"{n}-key-canary-0123456789"} for n in names]}
    )


@pytest.mark.anyio
async def test_a_replica_started_without_an_owner_revokes_its_families_everywhere(
    redis_url: str,
) -> None:
    first = TokenService(
        TokensConfig(), RedisTokenStore(redis_url), owner_exists=owner_check(_keys("alice", "bob"))
    )
    second = TokenService(
        TokensConfig(), RedisTokenStore(redis_url), owner_exists=owner_check(_keys("alice"))
    )
    await first.start()
    try:
        bobs = await first.mint(Principal(name="bob", kind="api_key"), "ci", None, False)
        alices = await first.mint(Principal(name="alice", kind="api_key"), "ci", None, False)
        assert await first.authenticator.authenticate(SCOPE, bobs.access_token) is not None
        await second.start()  # its config lacks bob: his families are orphans
        assert second.authenticator.verify(bobs.access_token) is None
        await _until_refused(first, bobs.access_token, PROPAGATION_SECONDS)
        with pytest.raises(TokenGrantError):
            await first.refresh(bobs.refresh_token)
        assert await first.authenticator.authenticate(SCOPE, alices.access_token) is not None
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.anyio
async def test_a_session_ending_on_one_replica_ends_its_families_on_another(
    redis_url: str,
) -> None:
    first = TokenService(TokensConfig(), RedisTokenStore(redis_url))
    second = TokenService(TokensConfig(), RedisTokenStore(redis_url), resync_interval=60)
    await first.start()
    await second.start()
    try:
        ends = time.time() + 3600
        user = Principal(name="octocat", kind="session", subject="github:1")
        pair = await first.mint(user, "laptop", None, False, session=LoginSession("s-1", ends))
        kept = await first.mint(user, "desktop", None, False, session=LoginSession("s-2", ends))
        assert pair.family.expires == ends
        assert await second.authenticator.authenticate(SCOPE, pair.access_token) is not None
        first.live_families.session_ended("s-1")
        assert first.authenticator.verify(pair.access_token) is None  # at once, in-process
        await _until_refused(second, pair.access_token, PROPAGATION_SECONDS)
        assert await second.authenticator.authenticate(SCOPE, kept.access_token) is not None
    finally:
        await first.stop()
        await second.stop()


async def _until_refused(service: TokenService, token: str, bound: float) -> None:
    for _ in range(int(bound / 0.02)):
        if service.authenticator.verify(token) is None:
            return
        await anyio.sleep(0.02)
    pytest.fail(f"the revoked token was still accepted after {bound}s")
