"""Proxy-issued tokens through the real proxy: minting, listing, use, rotation, theft
detection, revocation, introspection, expiry, and a signing key that survives restarts.

Every test builds the whole proxy with ``build_proxy`` over a SQLite store in ``tmp_path``,
enters its lifespan and talks to it through ``httpx.ASGITransport``. Two API keys from the
config act as an admin and a user; a third user checks that principals stay apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc import jwk

from llm_proxy_mw import LLMProxy, build_proxy
from llm_proxy_mw.auth import Principal
from llm_proxy_mw.auth._token_api import TokenApi
from llm_proxy_mw.auth._tokens import TokenService
from llm_proxy_mw.auth.token_store import Family, SqliteTokenStore, StoreError, open_token_store
from llm_proxy_mw.config import ConfigError, TokensConfig
from llm_proxy_mw.context import RequestContextMiddleware
from tests.fakes.clock import FakeClock

ADMIN_KEY = "admin-key-canary-0123456789"
USER_KEY = "user-key-canary-0123456789"
OTHER_KEY = "other-key-canary-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ADMIN, USER, OTHER = bearer(ADMIN_KEY), bearer(USER_KEY), bearer(OTHER_KEY)


def proxy_config(tmp_path: Path, **tokens: Any) -> dict[str, Any]:
    return {
        "providers": {"echo": {"kind": "echo"}},
        "auth": {
            "api_keys": [
                {"name": "root", "key": ADMIN_KEY, "admin": True},
                {"name": "alice", "key": USER_KEY},
                {"name": "bob", "key": OTHER_KEY},
            ],
            "tokens": tokens,
        },
        "store": {"url": f"sqlite:///{tmp_path}/s.db"},
    }


def token_service(proxy: LLMProxy) -> TokenService:
    assert proxy.auth_setup is not None
    return next(x for x in proxy.auth_setup.lifecycles if isinstance(x, TokenService))


@contextlib.asynccontextmanager
async def running(config: dict[str, Any]) -> AsyncIterator[tuple[LLMProxy, httpx.AsyncClient]]:
    proxy = build_proxy(config)
    transport = httpx.ASGITransport(app=proxy)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://h") as c:
        yield proxy, c


async def mint(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/auth/tokens", json={"name": "ci", **body}, headers=headers)
    assert response.status_code == 201, response.text
    minted: dict[str, Any] = response.json()
    return minted


async def chat(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=CHAT, headers=bearer(token))


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await client.post("/auth/token", data=form)


# -- minting and using --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mint_returns_the_pair_once_uncached(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        response = await client.post("/auth/tokens", json={"name": "ci"}, headers=USER)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"id", "access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["access_token"].count(".") == 2
    assert "." not in body["refresh_token"]  # opaque, not a JWT


@pytest.mark.anyio
async def test_access_token_calls_the_proxy_as_its_owner(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (proxy, client):
        pair = await mint(client, USER)
        response = await chat(client, pair["access_token"])
        anthropic = await client.post(
            "/v1/messages",
            json={**CHAT, "max_tokens": 5},
            headers={"x-api-key": pair["access_token"]},
        )
        verified = token_service(proxy).authenticator.verify(pair["access_token"])
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert anthropic.status_code == 200
    assert verified is not None
    assert verified.principal == Principal(
        name="api_key:alice", kind="token", admin=False, subject="api_key:alice"
    )
    assert verified.family == pair["id"]


@pytest.mark.anyio
async def test_access_token_header_and_claims(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (proxy, client):
        pair = await mint(client, USER, ttl_seconds=120)
        jwks = (await client.get("/.well-known/jwks.json")).json()
    header_segment, payload_segment, _ = pair["access_token"].split(".")
    header = json.loads(_b64(header_segment))
    claims = json.loads(_b64(payload_segment))
    assert header == {"alg": "Ed25519", "kid": jwks["keys"][0]["kid"], "typ": "at+jwt"}
    assert claims["iss"] == claims["aud"] == "llm_proxy_mw"
    assert (
        claims["sub"] == "api_key:alice" and claims["fam"] == pair["id"] and claims["adm"] is False
    )
    assert claims["exp"] - claims["iat"] == 120 == pair["expires_in"]
    assert claims["nbf"] == claims["iat"]
    assert {"jti", "scope"} <= set(claims)


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.mark.anyio
async def test_ttl_is_capped_by_max_ttl(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path, max_ttl_seconds=300)) as (_, client):
        pair = await mint(client, USER, ttl_seconds=100_000)
    assert pair["expires_in"] == 300


@pytest.mark.anyio
async def test_es256_is_supported(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path, algorithm="ES256")) as (_, client):
        pair = await mint(client, USER)
        response = await chat(client, pair["access_token"])
        jwks = (await client.get("/.well-known/jwks.json")).json()
    assert response.status_code == 200
    assert json.loads(_b64(pair["access_token"].split(".")[0]))["alg"] == "ES256"
    assert jwks["keys"][0]["kty"] == "EC" and jwks["keys"][0]["alg"] == "ES256"


@pytest.mark.anyio
async def test_jwks_has_public_material_only(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (proxy, client):
        response = await client.get("/.well-known/jwks.json")
        key = token_service(proxy).key
    assert response.status_code == 200
    [public] = response.json()["keys"]
    assert "d" not in public
    assert set(public) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert key is not None
    assert public["kid"] == jwk.thumbprint({k: public[k] for k in ("kty", "crv", "x")})
    assert json.loads(key.to_jwk())["d"] not in response.text


# -- who may do what --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_minting_needs_an_authenticated_caller(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        response = await client.post("/auth/tokens", json={"name": "ci"})
        forged = await client.post("/auth/tokens", json={"name": "ci"}, headers=bearer("x" * 40))
    for answer in (response, forged):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"]["code"] == "authentication_error"


@pytest.mark.anyio
async def test_non_admin_cannot_mint_an_admin_token(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        response = await client.post(
            "/auth/tokens", json={"name": "ci", "admin": True}, headers=USER
        )
        listed = (await client.get("/auth/tokens", headers=ADMIN)).json()["data"]
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Only an admin can mint an admin token."
    assert listed == []


@pytest.mark.anyio
async def test_admin_token_acts_as_admin(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, ADMIN, admin=True)
        user_pair = await mint(client, USER)
        listed = await client.get("/auth/tokens", headers=bearer(pair["access_token"]))
        metrics = await client.get("/metrics", headers=bearer(pair["access_token"]))
        user_metrics = await client.get("/metrics", headers=bearer(user_pair["access_token"]))
    assert {f["id"] for f in listed.json()["data"]} == {pair["id"], user_pair["id"]}
    assert metrics.status_code == 200
    assert user_metrics.status_code == 403


@pytest.mark.anyio
async def test_a_proxy_token_cannot_mint_tokens(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        response = await client.post(
            "/auth/tokens", json={"name": "child"}, headers=bearer(pair["access_token"])
        )
    assert response.status_code == 403


@pytest.mark.anyio
async def test_listing_shows_own_families_without_secrets(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        mine = await mint(client, USER, name="laptop")
        theirs = await mint(client, OTHER, name="ci")
        as_user = await client.get("/auth/tokens", headers=USER)
        as_admin = await client.get("/auth/tokens", headers=ADMIN)
        as_token = await client.get("/auth/tokens", headers=bearer(mine["access_token"]))
    assert [f["id"] for f in as_user.json()["data"]] == [mine["id"]]
    assert as_token.json() == as_user.json()
    assert {f["id"] for f in as_admin.json()["data"]} == {mine["id"], theirs["id"]}
    [family] = as_user.json()["data"]
    assert family["name"] == "laptop" and family["owner"] == "api_key:alice"
    assert family["admin"] is False and family["revoked"] is False
    for response in (as_user, as_admin):
        for secret in (mine["access_token"], mine["refresh_token"], theirs["refresh_token"]):
            assert secret not in response.text
        assert 'token"' not in response.text  # no access_token / refresh_token fields


@pytest.mark.anyio
async def test_another_principals_family_is_not_found(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        theirs = await mint(client, OTHER)
        path = f"/auth/tokens/{theirs['id']}"
        read = await client.get(path, headers=USER)
        delete = await client.delete(path, headers=USER)
        missing = await client.delete("/auth/tokens/tf_doesnotexist", headers=USER)
        weird = await client.delete("/auth/tokens/..%2F..%2Fetc", headers=USER)
        still_works = await chat(client, theirs["access_token"])
    for response in (read, delete, missing, weird):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "No such token family."
    assert still_works.status_code == 200


@pytest.mark.anyio
async def test_delete_revokes_the_family_at_once(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        assert (await chat(client, pair["access_token"])).status_code == 200  # now cached
        deleted = await client.delete(f"/auth/tokens/{pair['id']}", headers=USER)
        refused = await chat(client, pair["access_token"])
        refreshed = await refresh(client, pair["refresh_token"])
        shown = await client.get(f"/auth/tokens/{pair['id']}", headers=USER)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": pair["id"], "object": "token_family", "revoked": True}
    assert refused.status_code == 401
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert shown.json()["revoked"] is True


@pytest.mark.anyio
async def test_admin_may_revoke_anyones_family(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        deleted = await client.delete(f"/auth/tokens/{pair['id']}", headers=ADMIN)
        refused = await chat(client, pair["access_token"])
    assert deleted.status_code == 200
    assert refused.status_code == 401


@pytest.mark.anyio
async def test_an_owner_may_hold_at_most_max_families_per_owner(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path, max_families_per_owner=2)) as (_, client):
        first, _second = await mint(client, USER), await mint(client, USER)
        refused = await client.post("/auth/tokens", json={"name": "third"}, headers=USER)
        others = await mint(client, OTHER)  # the cap is per owner
        rotated = await refresh(client, first["refresh_token"])  # refreshing is not minting
        await client.delete(f"/auth/tokens/{first['id']}", headers=USER)
        after_revoking = await client.post("/auth/tokens", json={"name": "third"}, headers=USER)
    assert refused.status_code == 409
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"] == {
        "message": "At most 2 live token families per owner; revoke one to mint another.",
        "type": "invalid_request_error",
        "code": "too_many_token_families",
        "param": None,
    }
    assert others["id"] and rotated.status_code == 200
    assert after_revoking.status_code == 201


@pytest.mark.anyio
async def test_concurrent_mints_stop_at_the_cap(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path, max_families_per_owner=3)) as (_, client):
        answers: list[int] = []

        async def one() -> None:
            post = client.post("/auth/tokens", json={"name": "ci"}, headers=USER)
            answers.append((await post).status_code)

        async with anyio.create_task_group() as tasks:
            for _ in range(8):
                tasks.start_soon(one)
        listed = (await client.get("/auth/tokens", headers=USER)).json()["data"]
    assert sorted(answers) == [201] * 3 + [409] * 5
    assert len(listed) == 3


def test_max_families_per_owner_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_families_per_owner"):
        build_proxy(proxy_config(tmp_path, max_families_per_owner=0))
    assert TokensConfig().max_families_per_owner == 100


# -- refresh: rotation and theft ----------------------------------------------------------------


@pytest.mark.anyio
async def test_refresh_rotates_the_pair(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER, ttl_seconds=600)
        response = await refresh(client, pair["refresh_token"])
        new = response.json()
        works = await chat(client, new["access_token"])
        again = await refresh(client, new["refresh_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert set(new) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert new["refresh_token"] != pair["refresh_token"]
    assert new["access_token"] != pair["access_token"]
    assert new["expires_in"] == 600
    assert works.status_code == 200
    assert again.status_code == 200


@pytest.mark.anyio
async def test_reused_refresh_token_revokes_the_family(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        rotated = (await refresh(client, pair["refresh_token"])).json()
        stolen = await refresh(client, pair["refresh_token"])
        latest_access = await chat(client, rotated["access_token"])
        latest_refresh = await refresh(client, rotated["refresh_token"])
        family = (await client.get(f"/auth/tokens/{pair['id']}", headers=USER)).json()
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    assert latest_access.status_code == 401
    assert latest_refresh.json()["error"] == "invalid_grant"
    assert family["revoked"] is True
    assert any("revoked the family as stolen" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
        ({"refresh_token": "lpx_rt_x"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "lpx_rt_unknown"}, "invalid_grant"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, "invalid_grant"),
    ],
)
async def test_token_endpoint_errors(tmp_path: Path, form: dict[str, str], error: str) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        response = await client.post("/auth/token", data=form)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.anyio
async def test_token_endpoint_request_shape(tmp_path: Path) -> None:
    form = "grant_type=refresh_token&refresh_token=lpx_rt_a"
    async with running(proxy_config(tmp_path)) as (_, client):
        as_json = await client.post("/auth/token", json={"grant_type": "refresh_token"})
        as_get = await client.get("/auth/token")
        twice = await client.post(
            "/auth/token",
            content=form + "&grant_type=refresh_token",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        huge = await client.post(
            "/auth/token",
            content=form + "&pad=" + "x" * 70_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert as_json.status_code == 415 and as_json.json()["error"] == "invalid_request"
    assert as_get.status_code == 405 and as_get.headers["allow"] == "POST"
    assert twice.status_code == 400 and "more than once" in twice.json()["error_description"]
    assert huge.status_code == 413 and huge.json()["error"] == "invalid_request"


# -- the management API's request shape ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": 5},
        {"name": "x" * 101},
        {"name": "line\nbreak"},
        {"name": "ci", "ttl_seconds": 0},
        {"name": "ci", "ttl_seconds": True},
        {"name": "ci", "ttl_seconds": "60"},
        {"name": "ci", "admin": "yes"},
        {"name": "ci", "owner": "root"},
    ],
)
async def test_mint_validates_its_body(tmp_path: Path, body: dict[str, Any]) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        response = await client.post("/auth/tokens", json=body, headers=USER)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.anyio
async def test_mint_request_shape(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        form = await client.post("/auth/tokens", data={"name": "ci"}, headers=USER)
        not_json = await client.post(
            "/auth/tokens",
            content=b"{nope",
            headers={**USER, "content-type": "application/json"},
        )
        array = await client.post("/auth/tokens", json=["ci"], headers=USER)
        huge = await client.post(
            "/auth/tokens", json={"name": "ci", "pad": "x" * 70_000}, headers=USER
        )
        put = await client.put("/auth/tokens", json={"name": "ci"}, headers=USER)
    assert form.status_code == 415
    assert not_json.status_code == 400 and array.status_code == 400
    assert huge.status_code == 413
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST"


# -- revoke (RFC 7009) and introspect (RFC 7662) ------------------------------------------------


@pytest.mark.anyio
async def test_revoke_endpoint(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        mine, theirs = await mint(client, USER), await mint(client, OTHER)
        unknown = await client.post("/auth/revoke", data={"token": "whatever"}, headers=USER)
        other = await client.post(
            "/auth/revoke", data={"token": theirs["refresh_token"]}, headers=USER
        )
        own = await client.post("/auth/revoke", data={"token": mine["refresh_token"]}, headers=USER)
        anonymous = await client.post("/auth/revoke", data={"token": theirs["access_token"]})
        theirs_works = await chat(client, theirs["access_token"])
        mine_refused = await chat(client, mine["access_token"])
    assert unknown.status_code == other.status_code == own.status_code == 200
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    assert theirs_works.status_code == 200
    assert mine_refused.status_code == 401


@pytest.mark.anyio
async def test_revoking_an_access_token_revokes_its_family(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        token = pair["access_token"]
        response = await client.post("/auth/revoke", data={"token": token}, headers=bearer(token))
        refused = await chat(client, token)
        refreshed = await refresh(client, pair["refresh_token"])
    assert response.status_code == 200
    assert refused.status_code == 401
    assert refreshed.json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_introspect_shapes(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        rotated = (await refresh(client, pair["refresh_token"])).json()

        async def introspect(token: str, headers: dict[str, str] = ADMIN) -> httpx.Response:
            return await client.post("/auth/introspect", data={"token": token}, headers=headers)

        access = await introspect(rotated["access_token"])
        live_refresh = await introspect(rotated["refresh_token"])
        used_refresh = await introspect(pair["refresh_token"])
        garbage = await introspect("not.a.token")
        as_user = await introspect(rotated["access_token"], USER)
        anonymous = await client.post("/auth/introspect", data={"token": "x"})
        await client.delete(f"/auth/tokens/{pair['id']}", headers=ADMIN)
        revoked = await introspect(rotated["access_token"])
    body = access.json()
    assert access.status_code == 200 and access.headers["cache-control"] == "no-store"
    assert body["active"] is True and body["token_type"] == "access_token"
    assert body["sub"] == body["username"] == "api_key:alice"
    assert body["family"] == pair["id"] and body["admin"] is False
    assert {"exp", "iat", "scope", "iss", "aud", "jti"} <= set(body)
    assert live_refresh.json()["active"] is True
    assert live_refresh.json()["token_type"] == "refresh_token"
    for inactive in (used_refresh, garbage, revoked):
        assert inactive.status_code == 200 and inactive.json() == {"active": False}
    assert as_user.status_code == 403 and as_user.json()["error"] == "insufficient_scope"
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"


# -- time: expiry with an injected clock --------------------------------------------------------


@pytest.mark.anyio
async def test_access_token_expires_after_leeway(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    async with running(proxy_config(tmp_path, leeway_seconds=30)) as (proxy, client):
        token_service(proxy).clock = clock
        pair = await mint(client, USER, ttl_seconds=60)
        assert (await chat(client, pair["access_token"])).status_code == 200
        clock.now += 60 + 29  # within the leeway: still good (and served from the cache)
        assert (await chat(client, pair["access_token"])).status_code == 200
        clock.now += 1
        assert (await chat(client, pair["access_token"])).status_code == 401
        renewed = (await refresh(client, pair["refresh_token"])).json()
        assert (await chat(client, renewed["access_token"])).status_code == 200


@pytest.mark.anyio
async def test_family_expiry_ends_refresh(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    config = proxy_config(tmp_path, refresh_ttl_seconds=3600, max_ttl_seconds=7200)
    async with running(config) as (proxy, client):
        token_service(proxy).clock = clock
        pair = await mint(client, USER, ttl_seconds=7200)
        assert pair["expires_in"] == 3600  # an access token never outlives its family
        clock.now += 3601
        response = await refresh(client, pair["refresh_token"])
        listed = (await client.get("/auth/tokens", headers=USER)).json()["data"]
    assert response.json()["error"] == "invalid_grant"
    assert listed == []


# -- persistence ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tokens_survive_a_restart(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        revoked = await mint(client, USER)
        await client.delete(f"/auth/tokens/{revoked['id']}", headers=USER)
        jwks = (await client.get("/.well-known/jwks.json")).json()
    async with running(proxy_config(tmp_path)) as (_, client):
        works = await chat(client, pair["access_token"])
        still_revoked = await chat(client, revoked["access_token"])
        same_jwks = (await client.get("/.well-known/jwks.json")).json()
        refreshed = await refresh(client, pair["refresh_token"])
    assert works.status_code == 200
    assert still_revoked.status_code == 401
    assert same_jwks == jwks
    assert refreshed.status_code == 200


@pytest.mark.anyio
async def test_configured_signing_key_is_used(tmp_path: Path) -> None:
    key = jwk.generate_key("OKP", "Ed25519")
    private = json.dumps(key.as_dict(private=True))
    async with running(proxy_config(tmp_path, signing_key=private)) as (_, client):
        pair = await mint(client, USER)
        works = await chat(client, pair["access_token"])
        [public] = (await client.get("/.well-known/jwks.json")).json()["keys"]
    assert works.status_code == 200
    assert public["kid"] == key.thumbprint() and public["x"] == key.as_dict()["x"]


@pytest.mark.parametrize(
    ("signing_key", "message"),
    [
        ("not json", "not a JSON object"),
        (json.dumps({"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}), "OKP Ed25519"),
        ("PUBLIC", 'private JWK (with "d")'),
        ("MISMATCH", "not a valid OKP Ed25519 private JWK"),
    ],
)
def test_a_bad_signing_key_fails_the_build_without_showing_it(
    tmp_path: Path, signing_key: str, message: str
) -> None:
    key, other = jwk.generate_key("OKP", "Ed25519"), jwk.generate_key("OKP", "Ed25519")
    if signing_key == "PUBLIC":
        signing_key = json.dumps(key.as_dict(private=False))
    elif signing_key == "MISMATCH":  # x of one key, d of another
        signing_key = json.dumps({**key.as_dict(private=True), "x": other.as_dict()["x"]})
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        build_proxy(proxy_config(tmp_path, signing_key=signing_key))
    private = key.as_dict(private=True)["d"]
    assert private not in str(info.value) and private not in repr(info.value.__context__)


@pytest.mark.anyio
async def test_racing_replicas_end_with_one_signing_key(tmp_path: Path) -> None:
    first, second = (
        SqliteTokenStore(str(tmp_path / "k.db")),
        SqliteTokenStore(str(tmp_path / "k.db")),
    )
    await first.open()
    await second.open()
    try:
        a = await first.signing_key("EdDSA", "candidate-a")
        b = await second.signing_key("EdDSA", "candidate-b")
    finally:
        await first.close()
        await second.close()
    assert a == b == "candidate-a"


# -- other kinds of callers, and logs ----------------------------------------------------


@pytest.mark.anyio
async def test_a_logged_in_user_mints_for_itself(tmp_path: Path) -> None:
    """The API asks the resolver who calls; a session principal (OAuth login) may mint."""
    service = TokenService(TokensConfig(), SqliteTokenStore(str(tmp_path / "t.db")))

    async def session(scope: Any) -> Principal:
        return Principal(name="github:alice", kind="session")

    app = RequestContextMiddleware(TokenApi(service, resolve=session))
    await service.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
            pair = await mint(client, {})
            listed = (await client.get("/auth/tokens")).json()["data"]
    finally:
        await service.stop()
    verified = service.authenticator.verify(pair["access_token"])
    assert verified is not None and verified.principal.name == "session:github:alice"
    assert [f["owner"] for f in listed] == ["session:github:alice"]


@pytest.mark.anyio
async def test_no_token_or_key_reaches_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(proxy_config(tmp_path)) as (proxy, client):
        pair = await mint(client, USER)
        await chat(client, pair["access_token"])
        rotated = (await refresh(client, pair["refresh_token"])).json()
        await refresh(client, pair["refresh_token"])  # theft: logged as a warning
        await chat(client, rotated["access_token"])  # revoked: 401
        await chat(client, pair["access_token"][:-4] + "AAAA")  # bad signature
        await client.post(
            "/auth/introspect", data={"token": rotated["refresh_token"]}, headers=ADMIN
        )
        await client.post("/auth/revoke", data={"token": pair["access_token"]}, headers=USER)
        await client.post("/auth/tokens", json={"name": "x", "admin": True}, headers=USER)
        key = token_service(proxy).key
    assert key is not None
    canaries = [ADMIN_KEY, USER_KEY, json.loads(key.to_jwk())["d"]]
    canaries += [pair["access_token"], pair["refresh_token"]]
    canaries += [rotated["access_token"], rotated["refresh_token"]]
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert caplog.records  # the flows above did log
    for canary in canaries:
        assert canary not in logged
        assert canary.split(".")[-1] not in logged  # not even a signature


@pytest.mark.anyio
async def test_concurrent_refreshes_rotate_exactly_once(tmp_path: Path) -> None:
    async with running(proxy_config(tmp_path)) as (_, client):
        pair = await mint(client, USER)
        async with anyio.create_task_group() as tasks:
            answers: list[httpx.Response] = []

            async def one() -> None:
                answers.append(await refresh(client, pair["refresh_token"]))

            for _ in range(8):
                tasks.start_soon(one)
        family = (await client.get(f"/auth/tokens/{pair['id']}", headers=USER)).json()
    assert sorted(a.status_code for a in answers) == [200] + [400] * 7
    assert family["revoked"] is True  # the other seven were a second party: theft


# -- the store failing ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unreachable_store_answers_503_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A [store] that does not open keeps the proxy from starting, so the store goes away
    # once the proxy has started: the token store, started on demand, opens only then.
    config = proxy_config(tmp_path)
    del config["auth"]["tokens"]
    directory = tmp_path / "store"
    directory.mkdir()
    config["store"]["url"] = f"sqlite:///{directory}/s.db"
    async with running(config) as (_, client):
        directory.rename(tmp_path / "away")
        minted = await client.post("/auth/tokens", json={"name": "ci"}, headers=USER)
        jwks = await client.get("/.well-known/jwks.json")
        refreshed = await refresh(client, "lpx_rt_whatever")
        api_key_works = await client.post("/v1/chat/completions", json=CHAT, headers=USER)
        (tmp_path / "away").rename(directory)
        recovered = await client.post("/auth/tokens", json={"name": "ci"}, headers=USER)
    assert minted.status_code == jwks.status_code == 503
    assert minted.headers["retry-after"] == "5"
    assert minted.json()["error"]["message"] == "The token store is unavailable; try again shortly."
    assert refreshed.status_code == 503
    assert refreshed.json()["error"] == "temporarily_unavailable"
    assert api_key_works.status_code == 200
    assert recovered.status_code == 201
    messages = [r.getMessage() for r in caplog.records]
    assert any("token store unavailable" in m for m in messages)
    assert any("available again" in m for m in messages)


@pytest.mark.anyio
async def test_a_token_whose_family_cannot_be_looked_up_gets_503(tmp_path: Path) -> None:
    """A family not seen yet needs the store once; while it is down, that is a 503."""
    async with running(proxy_config(tmp_path)) as (proxy, client):
        pair = await mint(client, USER)
        store = token_service(proxy).store
        real = store.family

        async def down(family_id: str) -> Family | None:
            raise StoreError("connection refused")

        store.family = down  # type: ignore[method-assign]
        refused = await chat(client, pair["access_token"])
        store.family = real  # type: ignore[method-assign]
        recovered = await chat(client, pair["access_token"])
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["message"] == (
        "The token store is unavailable; try again shortly."
    )
    assert recovered.status_code == 200


@pytest.mark.anyio
async def test_the_lifespan_can_run_twice(tmp_path: Path) -> None:
    proxy = build_proxy(proxy_config(tmp_path))
    transport = httpx.ASGITransport(app=proxy)
    for _ in range(2):
        async with (
            proxy.lifespan(),
            httpx.AsyncClient(transport=transport, base_url="http://h") as c,
        ):
            pair = await mint(c, USER)
            assert (await chat(c, pair["access_token"])).status_code == 200


# -- the store contract, on both backends --------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/contract.db"
        return
    from tests.fakes.redis_server import redis_server

    with redis_server() as redis:
        yield redis.url


#: Real epoch seconds as the test started (``fresh_epoch``): Redis expires keys by its own
#: clock (EXPIREAT), so a time read as the module was imported would be minutes old for a
#: test that runs late in the suite, and its families would expire as they were added.
T = float(int(time.time()))


@pytest.fixture(autouse=True)
def fresh_epoch() -> None:
    global T
    T = float(int(time.time()))


def family(
    family_id: str, owner: str = "alice", now: float | None = None, **changes: Any
) -> Family:
    now = T if now is None else now
    fields: dict[str, Any] = {
        "id": family_id,
        "owner": owner,
        "name": "ci",
        "admin": False,
        "scope": "a b",
        "access_ttl": 60,
        "created": now,
        "expires": now + 100,
    }
    return Family(**{**fields, **changes})


@pytest.mark.anyio
async def test_store_contract(store_url: str) -> None:
    store = open_token_store(store_url)
    await store.open()
    try:
        assert await store.signing_key("EdDSA", "first") == "first"
        assert await store.signing_key("EdDSA", "second") == "first"
        assert await store.signing_key("ES256", "other") == "other"

        await store.add_family(family("tf_a", admin=True), "hash-a1")
        await store.add_family(family("tf_b", owner="bob", now=T + 1), "hash-b1")
        assert await store.family("tf_a") == family("tf_a", admin=True)
        assert await store.family("tf_missing") is None
        assert [f.id for f in await store.families(None, T + 50)] == ["tf_a", "tf_b"]
        assert [f.id for f in await store.families("bob", T + 50)] == ["tf_b"]
        assert [f.id for f in await store.families(None, T + 100.5)] == ["tf_b"]

        record = await store.refresh_record("hash-a1")
        assert record is not None and record.used is None and record.family.id == "tf_a"
        assert record.issued == T
        assert await store.refresh_record("hash-none") is None

        assert (await store.rotate("hash-none", "x", T + 10)).status == "unknown"
        rotated = await store.rotate("hash-a1", "hash-a2", T + 10)
        assert rotated.status == "rotated" and rotated.family == family("tf_a", admin=True)
        used = await store.refresh_record("hash-a1")
        assert used is not None and used.used == T + 10
        assert (await store.rotate("hash-b1", "hash-b2", T + 101)).status == "expired"

        reused = await store.rotate("hash-a1", "hash-a3", T + 20)
        assert reused.status == "reused"
        assert reused.family is not None and reused.family.revoked == T + 20
        assert (await store.rotate("hash-a2", "hash-a4", T + 21)).status == "revoked"
        assert await store.revoked(T + 30) == {"tf_a": T + 100}

        assert await store.revoke("tf_b", T + 40) is True
        assert await store.revoke("tf_b", T + 41) is True  # idempotent: keeps the first time
        assert await store.revoke("tf_missing", T + 40) is False
        revoked_b = await store.family("tf_b")
        assert revoked_b is not None and revoked_b.revoked == T + 40
        assert await store.revoked(T + 100.5) == {"tf_b": T + 101}

        assert await store.purge(T + 100.5) == 1
        assert await store.revoked(T + 101.5) == {}
        assert await store.families(None, T + 101.5) == []
    finally:
        await store.close()


@pytest.mark.anyio
async def test_store_caps_live_families_per_owner_atomically(store_url: str) -> None:
    store = open_token_store(store_url)
    await store.open()
    try:
        added = await asyncio.gather(
            *(store.add_family(family(f"tf_{i}"), f"hash-{i}", limit=3) for i in range(8))
        )
        assert sorted(added) == [False] * 5 + [True] * 3
        assert await store.add_family(family("tf_bob", owner="bob"), "hash-bob", limit=3)
        [first, *_] = await store.families("alice", T)
        assert await store.revoke(first.id, T + 1)
        assert await store.add_family(family("tf_next", now=T + 2), "hash-next", limit=3)
        assert not await store.add_family(family("tf_over", now=T + 2), "hash-over", limit=3)
        # Expired families do not count (their clock is the new family's creation).
        assert await store.add_family(family("tf_later", now=T + 101), "hash-later", limit=3)
        assert await store.family("tf_over") is None
        assert await store.refresh_record("hash-over") is None
    finally:
        await store.close()


@pytest.mark.anyio
async def test_store_keeps_the_owners_identity(store_url: str) -> None:
    store = open_token_store(store_url)
    await store.open()
    try:
        facts = json.dumps({"login": "octocat", "emails": ["o@acme.example"], "orgs": []})
        await store.add_family(family("tf_s", owner="session:github:1", identity=facts), "h-s")
        found = await store.family("tf_s")
        assert found is not None and found.identity == facts
        rotated = await store.rotate("h-s", "h-s2", T + 1)
        assert rotated.family is not None and rotated.family.identity == facts
        record = await store.refresh_record("h-s2")
        assert record is not None and record.family.identity == facts
        assert [f.identity for f in await store.families("session:github:1", T)] == [facts]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_store_pushes_revocations(store_url: str) -> None:
    store, other = open_token_store(store_url), open_token_store(store_url)
    await store.open()
    await other.open()
    heard: list[str | None] = []
    try:
        await store.add_family(family("tf_a", now=time.time()), "hash-a1")
        listening = other.revocations()
        heard.append(await anext(listening))  # listening from here on
        await store.revoke("tf_a", time.time())
        if store_url.startswith("redis"):
            with anyio.fail_after(2):
                heard.append(await anext(listening))
        await listening.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
        await other.close()
    assert heard == ([None, "tf_a"] if store_url.startswith("redis") else [None])


@pytest.mark.anyio
async def test_a_store_from_before_owner_identities_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE token_families (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "name TEXT NOT NULL, admin INTEGER NOT NULL, scope TEXT NOT NULL, "
            "access_ttl INTEGER NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, "
            "revoked REAL) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO token_families VALUES "
            "('tf_old', 'api_key:alice', 'ci', 0, '', 60, ?, ?, NULL)",
            (T, T + 100),
        )
    store = SqliteTokenStore(str(path))
    await store.open()
    try:
        assert await store.family("tf_old") == family("tf_old", owner="api_key:alice", scope="")
        await store.add_family(family("tf_new", identity='{"login": "x"}'), "hash-new")
        new = await store.family("tf_new")
        assert new is not None and new.identity == '{"login": "x"}'
    finally:
        await store.close()


def test_store_urls() -> None:
    assert isinstance(open_token_store("sqlite:///:memory:"), SqliteTokenStore)
    with pytest.raises(ValueError, match="unsupported token store URL 'http://\\*\\*\\*@x'"):
        open_token_store("http://user:secret@x")
