"""Token families bound to their owner, through the real proxy.

A family lives only while the principal that minted it does: an API key still configured
(and still an admin, for an admin family), an OAuth identity still let in by its provider's
current allow lists, a login session not logged out or expired. Restarts are a second proxy
built over the same SQLite file with another config; the GitHub login is the respx-faked
GitHub of ``test_auth_login``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_proxy_mw import LLMProxy, build_proxy
from llm_proxy_mw.auth import Principal
from llm_proxy_mw.auth._token_api import TokenApi
from llm_proxy_mw.auth._token_owners import LoginSession, owner_check
from llm_proxy_mw.auth._tokens import TokenService
from llm_proxy_mw.auth.token_store import Family, SqliteTokenStore
from llm_proxy_mw.config import AuthConfig, TokensConfig
from llm_proxy_mw.context import RequestContextMiddleware
from tests.test_auth_login import (
    CLIENT_SECRET,
    SAME_ORIGIN,
    USERS,
    FakeGitHub,
    GitHubProxy,
    RespxBridge,
    host,
    oauth_login,
    signed_in,
)
from tests.test_auth_login import proxy_config as login_config
from tests.test_auth_tokens import (
    ADMIN,
    ADMIN_KEY,
    OTHER,
    USER,
    FakeClock,
    bearer,
    chat,
    mint,
    proxy_config,
    refresh,
    running,
    token_service,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def without_key(config: dict[str, Any], name: str) -> dict[str, Any]:
    keys = [k for k in config["auth"]["api_keys"] if k["name"] != name]
    return {**config, "auth": {**config["auth"], "api_keys": keys}}


async def families(client: httpx.AsyncClient, prefix: str = "") -> dict[str, dict[str, Any]]:
    listed = await client.get(f"{prefix}/auth/tokens", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    return {f["id"]: f for f in listed.json()["data"]}


# -- API keys -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_removed_api_keys_families_die_with_it(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        bobs, alices = await mint(client, OTHER), await mint(client, USER)
    async with running(without_key(proxy_config(tmp_path), "bob")) as (_, client):
        key = await client.post("/v1/chat/completions", json=CHAT, headers=OTHER)
        access = await chat(client, bobs["access_token"])
        refreshed = await refresh(client, bobs["refresh_token"])
        alice_access = await chat(client, alices["access_token"])
        alice_refresh = await refresh(client, alices["refresh_token"])
        listed = await families(client)
    assert key.status_code == access.status_code == 401
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert alice_access.status_code == alice_refresh.status_code == 200
    # Revoked in the store at start-up, so every replica sharing it learns of it.
    assert listed[bobs["id"]]["revoked"] is True
    assert listed[alices["id"]]["revoked"] is False


@pytest.mark.anyio
async def test_an_admin_family_dies_when_its_owner_is_no_longer_an_admin(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        admin_pair, plain_pair = await mint(client, ADMIN, admin=True), await mint(client, ADMIN)
    demoted = proxy_config(tmp_path)
    demoted["auth"]["api_keys"][0]["admin"] = False
    demoted["auth"]["api_keys"].append(
        {"name": "ops", "key": "ops-key-canary-0123456789", "admin": True}
    )
    async with running(demoted) as (_, client):
        admin_access = await chat(client, admin_pair["access_token"])
        admin_refresh = await refresh(client, admin_pair["refresh_token"])
        plain_access = await chat(client, plain_pair["access_token"])
    assert admin_access.status_code == 401
    assert admin_refresh.json()["error"] == "invalid_grant"
    assert plain_access.status_code == 200


# -- OAuth login sessions -----------------------------------------------------------------------


@dataclass
class Login:
    proxy: LLMProxy
    #: Two browsers, each with its own cookies.
    gh: GitHubProxy
    other: GitHubProxy
    #: A client without a session cookie, so that a token is all it presents.
    bare: httpx.AsyncClient

    async def mint(self, browser: GitHubProxy | None = None) -> dict[str, Any]:
        post = (browser or self.gh).client.post
        minted = await post("/llm/auth/tokens", json={"name": "laptop"}, headers=SAME_ORIGIN)
        assert minted.status_code == 201, minted.text
        pair: dict[str, Any] = minted.json()
        return pair

    async def chat(self, token: str) -> int:
        post = self.bare.post("/llm/v1/chat/completions", json=CHAT, headers=bearer(token))
        return (await post).status_code

    async def refresh(self, refresh_token: str) -> httpx.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self.bare.post("/llm/auth/token", data=form)


@contextlib.asynccontextmanager
async def github_login(tmp_path: Path, **github: Any) -> AsyncIterator[Login]:
    settings = {"client_id": "gh-client", "client_secret": CLIENT_SECRET, **github}
    admin = [{"name": "root", "key": ADMIN_KEY, "admin": True}]
    proxy = build_proxy(login_config(tmp_path, {"github": settings}, api_keys=admin))
    fake = FakeGitHub(USERS)
    login = oauth_login(proxy)
    login.transport = RespxBridge(fake.router)
    app = host(proxy)
    transport = httpx.ASGITransport(app=app)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as other,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as bare,
    ):
        browsers = GitHubProxy(client, login, fake, app), GitHubProxy(other, login, fake, app)
        yield Login(proxy, *browsers, bare)


ACME = {"allowed_orgs": ["acme"], "allowed_domains": ["acme.example"]}


@pytest.mark.anyio
async def test_logging_out_ends_the_families_that_session_minted(tmp_path: Path) -> None:
    async with github_login(tmp_path, **ACME) as login:
        await login.other.sign_in("octocat")  # a session of the same user elsewhere
        laptop = await login.mint(login.other)
        await login.gh.sign_in("octocat")
        desktop = await login.mint()
        assert await login.chat(desktop["access_token"]) == 200  # verified and cached
        out = await login.gh.client.post("/llm/auth/logout", headers=SAME_ORIGIN)
        assert out.status_code == 204
        assert await login.chat(desktop["access_token"]) == 401
        refreshed = await login.refresh(desktop["refresh_token"])
        assert refreshed.json()["error"] == "invalid_grant"
        # The other session is still signed in: what it minted lives on.
        assert await login.chat(laptop["access_token"]) == 200
        assert (await login.refresh(laptop["refresh_token"])).status_code == 200
        assert (await families(login.bare, "/llm"))[desktop["id"]]["revoked"] is True


@pytest.mark.anyio
async def test_a_session_the_provider_ends_ends_its_families(tmp_path: Path) -> None:
    async with github_login(tmp_path, **ACME) as login:
        await login.gh.sign_in("octocat")
        pair = await login.mint()
        session = signed_in(login.gh.login, "octocat")
        assert session.token is not None
        session.token["expires_at"] = time.time() + 10  # its refresh is due
        login.gh.fake.refresh_error = (400, "invalid_grant")  # the user revoked the grant
        me = await login.gh.client.get("/llm/auth/me")
        assert me.status_code == 401
        assert await login.chat(pair["access_token"]) == 401
        assert (await login.refresh(pair["refresh_token"])).json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_a_session_minted_family_expires_with_the_session(tmp_path: Path) -> None:
    async with github_login(tmp_path, **ACME) as login:
        await login.gh.sign_in("octocat")
        me = (await login.gh.client.get("/llm/auth/me")).json()
        pair = await login.mint()
        listed = await families(login.bare, "/llm")
        assert listed[pair["id"]]["expires"] == me["expires_at"]  # not 30 days

        clock = FakeClock()
        token_service(login.proxy).clock = clock
        clock.now = me["expires_at"] + 31  # past the session, and past the leeway
        assert await login.chat(pair["access_token"]) == 401
        assert (await login.refresh(pair["refresh_token"])).json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_a_user_dropped_from_the_allow_lists_loses_its_families(tmp_path: Path) -> None:
    async with github_login(tmp_path, **ACME) as login:
        await login.other.sign_in("hubot")  # in the acme org, without a verified address
        hubot = await login.mint(login.other)
        await login.gh.sign_in("octocat")  # in the org, with an acme.example address
        octocat = await login.mint()
    # Restarted with the org no longer enough: octocat's verified address still is.
    async with github_login(tmp_path, allowed_domains=["acme.example"]) as login:
        assert await login.chat(hubot["access_token"]) == 401
        assert (await login.refresh(hubot["refresh_token"])).json()["error"] == "invalid_grant"
        assert await login.chat(octocat["access_token"]) == 200
        assert (await login.refresh(octocat["refresh_token"])).status_code == 200
        listed = await families(login.bare, "/llm")
    assert listed[hubot["id"]]["revoked"] is True
    assert listed[octocat["id"]]["revoked"] is False


# -- the owner check, from config ----------------------------------------------------------------


def family(owner: str, *, admin: bool = False, identity: dict[str, Any] | None = None) -> Family:
    facts = json.dumps(identity) if identity is not None else ""
    return Family("tf_x", owner, "ci", admin, "", 60, 0.0, 1e12, identity=facts)


def test_owner_check_follows_the_config() -> None:
    config = AuthConfig.model_validate(
        {
            "api_keys": [
                {"name": "root", "key": ADMIN_KEY, "admin": True},
                {"name": "alice", "key": "alice-key-canary-0123456789"},
            ],
            "jwt_issuers": {
                "corp": {
                    "issuer": "https://idp.example",
                    "audience": "llm",
                    "jwks_url": "https://idp.example/jwks",
                    "admin_subjects": ["boss"],
                }
            },
            "session_secret": "s" * 32,
            "oauth": {"github": {"client_id": "c", "client_secret": "x", "allowed_orgs": ["acme"]}},
        }
    )
    exists = owner_check(config)
    octocat = {"subject": "1", "login": "octocat", "emails": [], "orgs": ["acme"]}
    assert exists(family("api_key:alice"))
    assert exists(family("api_key:root", admin=True))
    assert not exists(family("api_key:alice", admin=True))  # not an admin (any more)
    assert not exists(family("api_key:bob"))
    assert exists(family("jwt:corp:someone"))
    assert exists(family("jwt:corp:boss", admin=True))
    assert not exists(family("jwt:corp:someone", admin=True))
    assert not exists(family("jwt:gone:someone"))
    assert exists(family("session:github:1", identity=octocat))
    assert not exists(family("session:github:1", identity={**octocat, "orgs": ["evil"]}))
    assert not exists(family("session:github:1", admin=True, identity=octocat))
    assert not exists(family("session:google:1", identity=octocat))  # provider not configured
    assert not exists(family("session:github:1"))  # nothing known that passes the lists
    assert not exists(family("session:github:1", identity={"unknown": 1}))
    assert not exists(family("token:whatever"))
    for unreadable in ("not json", "[1]", '{"login": "octocat", "unknown": 1}'):
        orphan = dataclasses.replace(family("session:github:1"), identity=unreadable)
        assert not exists(orphan)


# -- the families of login sessions, in process ------------------------------------------------


@pytest.mark.anyio
async def test_sessions_whose_families_all_expired_are_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    service = TokenService(TokensConfig(), SqliteTokenStore(str(tmp_path / "t.db")), clock=clock)
    user = Principal(name="octocat", kind="session", subject="github:1")
    await service.start()
    try:
        short = LoginSession("s-short", clock.now + 60)
        first = await service.mint(user, "a", None, False, session=short)
        clock.now += 61
        later = LoginSession("s-later", clock.now + 3600)
        second = await service.mint(user, "b", None, False, session=later)
        service.live_families.session_ended("s-short")  # forgotten: nothing left to revoke
        assert first.family.id not in service.revoked
        service.live_families.session_ended("s-later")
        assert second.family.id in service.revoked
    finally:
        await service.stop()
    # ``stop`` waited for the revocation to reach the store, where other replicas learn it.
    store = SqliteTokenStore(str(tmp_path / "t.db"))
    await store.open()
    try:
        stored = await store.family(second.family.id)
        assert stored is not None and stored.revoked is not None
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_session_that_ended_before_minting_mints_nothing(tmp_path: Path) -> None:
    service = TokenService(TokensConfig(), SqliteTokenStore(str(tmp_path / "t.db")))

    async def session_user(scope: Any) -> Principal:
        return Principal(name="octocat", kind="session", subject="github:1")

    api = TokenApi(service, resolve=session_user, session_of=lambda scope: None)
    await service.start()
    try:
        transport = httpx.ASGITransport(app=RequestContextMiddleware(api))
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
            refused = await client.post("/auth/tokens", json={"name": "ci"})
        assert refused.status_code == 401
        assert await service.families(None) == []
    finally:
        await service.stop()
