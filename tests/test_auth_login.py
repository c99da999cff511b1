"""OAuth2 login: the flow end to end against a real OpenID provider (``oidc-provider-mock``
on loopback) and the GitHub preset against a respx-faked GitHub, each attack a test, and the
session's server-side token refresh (single flight; ``invalid_grant`` ends the session).

The proxy is mounted at ``/llm`` in a Starlette host: under real uvicorn for the OpenID
provider, through ``httpx.ASGITransport`` for fake GitHub. Authlib's client speaks httpx2,
so respx is reached through a small httpx2 transport bridge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.routing import Mount

from llm_proxy_mw import LLMProxy, build_proxy
from llm_proxy_mw.auth._oauth_http import safe_next
from llm_proxy_mw.auth._oauth_login import OAuthLogin
from llm_proxy_mw.auth._oauth_presets import (
    GITHUB_AUTHORIZE_URL,
    GITHUB_TOKEN_URL,
    GOOGLE_METADATA_URL,
    Identity,
    client_registration,
    is_admin,
    is_allowed,
    oidc_identity,
)
from llm_proxy_mw.auth._oauth_refresh import SessionRefresher, stored_token
from llm_proxy_mw.auth._sessions import Session
from llm_proxy_mw.config import ConfigError, OAuthConfig
from tests.fakes.processes import stop_process
from tests.fakes.servers import UvicornServer, free_port

CLIENT_SECRET = "client-secret-canary-5d1c7e90ab"
SESSION_SECRET = "session-secret-canary-0123456789abcdef-42"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = 10.0


def proxy_config(store_dir: Path, oauth: dict[str, Any], **auth: Any) -> dict[str, Any]:
    return {
        "providers": {"echo": {"kind": "echo"}},
        "store": {"url": f"sqlite:///{store_dir / 'store.db'}"},
        "auth": {"session_secret": SESSION_SECRET, "oauth": oauth, **auth},
    }


def host(proxy: LLMProxy) -> Starlette:
    return Starlette(routes=[Mount("/llm", app=proxy)], lifespan=proxy.lifespan)


def oauth_login(proxy: LLMProxy) -> OAuthLogin:
    assert proxy.auth_setup is not None
    return next(e for e in proxy.auth_setup.endpoints if isinstance(e, OAuthLogin))


def signed_in(login: OAuthLogin, name: str) -> Session:
    return next(s for s in login.sessions.sessions() if s.principal and s.principal.name == name)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record, but those of the test's own client (httpx, httpcore log the responses
    it receives); the proxy's OAuth client is Authlib's, on httpx2 and httpcore2."""
    own = ("httpx", "httpcore")
    return "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] not in own)


# ---- safe ?next= ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example/x",
        "//evil.example/x",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\t/evil.example",
        "/caf\u00e9",
        "",
        None,
    ],
)
def test_next_refuses_anything_but_a_relative_path(value: str | None) -> None:
    assert safe_next(value) is None


@pytest.mark.parametrize("value", ["/", "/llm/auth/me", "/app/page?x=1#top", "/a%2F%2Fb"])
def test_next_keeps_a_relative_path(value: str) -> None:
    assert safe_next(value) == value


# ---- a real OpenID provider on loopback ----------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"oidc-provider-mock is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[str]:
    """``python -m oidc_provider_mock`` on a free loopback port; its base URL."""
    if importlib.util.find_spec("oidc_provider_mock") is None:
        _unavailable("oidc-provider-mock is not installed")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/.well-known/openid-configuration", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"oidc-provider-mock did not start on port {port}")
            time.sleep(0.05)
        yield url
    finally:
        stop_process(process)


@dataclass
class Mounted:
    url: str
    idp: str
    login: OAuthLogin

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=TIMEOUT, trust_env=False)

    def sign_in(self, browser: httpx.Client, sub: str, next_path: str | None = None) -> str:
        """Log in as ``sub`` up to the callback; the callback URL the provider redirected to."""
        start = browser.get("/llm/auth/login/mock", params={"next": next_path} if next_path else {})
        assert start.status_code == 302, start.text
        consent = browser.post(start.headers["location"], data={"sub": sub})
        assert consent.status_code == 302, consent.text
        return consent.headers["location"]


@pytest.fixture(scope="module")
def oidc(oidc_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    mock = {
        "client_id": "llm-proxy-test",
        "client_secret": CLIENT_SECRET,
        "server_metadata_url": f"{oidc_provider}/.well-known/openid-configuration",
        "allowed_users": ["sub:alice", "sub:bob", "sub:carol", "sub:dave", "sub:erin"],
        "admin_users": ["sub:alice"],
    }
    proxy = build_proxy(proxy_config(tmp_path_factory.mktemp("oidc"), {"mock": mock}))
    with UvicornServer(host(proxy)) as server:
        yield Mounted(server.url, oidc_provider, oauth_login(proxy))


def test_oidc_login_end_to_end(oidc: Mounted, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with oidc.browser() as browser:
        start = browser.get("/llm/auth/login/mock", params={"next": "/llm/auth/me"})
        authorize = parse_qs(urlsplit(start.headers["location"]).query)
        assert authorize["redirect_uri"] == [f"{oidc.url}/llm/auth/callback/mock"]
        assert authorize["code_challenge_method"] == ["S256"]
        assert authorize["nonce"] and authorize["state"] and authorize["code_challenge"]
        assert "HttpOnly" in start.headers["set-cookie"]

        consent = browser.post(start.headers["location"], data={"sub": "alice"})
        done = browser.get(consent.headers["location"])
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/llm/auth/me"
        cookie = done.headers["set-cookie"]
        assert "Path=/llm;" in cookie and "SameSite=Lax" in cookie and "HttpOnly" in cookie
        assert "Secure" not in cookie  # plain http on loopback

        me = browser.get("/llm/auth/me")
        assert me.status_code == 200
        assert me.json() | {"expires_at": 0} == {
            "name": "alice",
            "kind": "session",
            "admin": True,
            "subject": "mock:alice",
            "idp": "mock",
            "expires_at": 0,
        }
        same = browser.post("/llm/v1/chat/completions", json=CHAT, headers={"origin": oidc.url})
        assert same.status_code == 200, same.text
        assert same.json()["choices"][0]["message"]["content"] == "echo: hi"
        foreign = {"origin": "https://evil.example"}
        refused = browser.post("/llm/v1/chat/completions", json=CHAT, headers=foreign)
        assert refused.status_code == 401
        no_origin = browser.post("/llm/v1/chat/completions", json=CHAT)
        assert no_origin.status_code == 401
        by_referer = {"referer": f"{oidc.url}/app/page"}
        assert browser.post("/llm/v1/chat/completions", json=CHAT, headers=by_referer).is_success
        session_cookie = browser.cookies["llm_proxy_session"]

    token = signed_in(oidc.login, "alice").token
    assert token is not None and "id_token" not in token
    text = logged(caplog) + refused.text
    for secret in (CLIENT_SECRET, SESSION_SECRET, session_cookie, token["access_token"]):
        assert secret not in text
    assert "code_verifier" not in text


def test_forged_state_is_refused_and_leaves_the_real_login_alone(oidc: Mounted) -> None:
    with oidc.browser() as browser:
        start = browser.get("/llm/auth/login/mock")
        forged = browser.get("/llm/auth/callback/mock", params={"code": "x", "state": "forged"})
        assert forged.status_code == 400
        assert browser.get("/llm/auth/me").status_code == 401
        consent = browser.post(start.headers["location"], data={"sub": "bob"})
        assert browser.get(consent.headers["location"]).status_code == 303
        assert browser.get("/llm/auth/me").json()["name"] == "bob"


def test_replayed_state_is_refused(oidc: Mounted) -> None:
    with oidc.browser() as browser:
        callback = oidc.sign_in(browser, "bob")
        assert browser.get(callback).status_code == 303
        replay = browser.get(callback)
        assert replay.status_code == 400
        assert "no login with this state" in replay.json()["error"]["message"]
    with oidc.browser() as elsewhere:  # the stolen callback URL in another browser
        assert elsewhere.get(callback).status_code == 400
        assert elsewhere.get("/llm/auth/me").status_code == 401


def test_code_used_twice_is_refused(oidc: Mounted) -> None:
    with oidc.browser() as browser:
        first = oidc.sign_in(browser, "bob")
        assert browser.get(first).status_code == 303
    code = parse_qs(urlsplit(first).query)["code"][0]
    with oidc.browser() as attacker:
        start = attacker.get("/llm/auth/login/mock")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        again = attacker.get("/llm/auth/callback/mock", params={"code": code, "state": state})
        assert again.status_code == 400
        assert "invalid_grant" in again.json()["error"]["message"]
        assert attacker.get("/llm/auth/me").status_code == 401


@pytest.mark.parametrize(
    "next_path", ["https://evil.example/", "//evil.example/", "/\\evil.example"]
)
def test_login_ignores_a_foreign_next(oidc: Mounted, next_path: str) -> None:
    with oidc.browser() as browser:
        done = browser.get(oidc.sign_in(browser, "dave", next_path))
        assert done.status_code == 303
        assert done.headers["location"] == "/llm/"


def test_disallowed_user_is_refused(oidc: Mounted) -> None:
    with oidc.browser() as browser:
        refused = browser.get(oidc.sign_in(browser, "mallory"))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        assert browser.get("/llm/auth/me").status_code == 401


def test_logout_is_same_origin_only_and_ends_the_session(oidc: Mounted) -> None:
    with oidc.browser() as browser:
        browser.get(oidc.sign_in(browser, "erin"))
        cookie = browser.cookies["llm_proxy_session"]
        evil = browser.post("/llm/auth/logout", headers={"origin": "https://evil.example"})
        assert evil.status_code == 403
        assert browser.get("/llm/auth/me").status_code == 200
        out = browser.post("/llm/auth/logout", headers={"origin": oidc.url})
        assert out.status_code == 204
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert browser.get("/llm/auth/me").status_code == 401
    with oidc.browser() as replay:  # the old cookie, kept by someone, is worthless now
        replay.cookies.set("llm_proxy_session", cookie, path="/llm")
        assert replay.get("/llm/auth/me").status_code == 401


def test_session_refreshes_with_the_real_provider_and_ends_on_invalid_grant(
    oidc: Mounted,
) -> None:
    with oidc.browser() as browser:
        browser.get(oidc.sign_in(browser, "carol"))
        session = signed_in(oidc.login, "carol")
        assert session.token is not None and session.token["refresh_token"]
        before = session.token["access_token"]
        session.token["expires_at"] = time.time() + 5  # inside the refresh margin
        assert browser.get("/llm/auth/me").status_code == 200
        assert session.token["access_token"] != before
        assert session.token["expires_at"] > time.time() + 600

        # The provider withdraws carol's grant: the next refresh gets invalid_grant.
        httpx.post(f"{oidc.idp}/users/carol/revoke-tokens", timeout=TIMEOUT).raise_for_status()
        session.token["expires_at"] = time.time() + 5
        assert browser.get("/llm/auth/me").status_code == 401
        assert session not in oidc.login.sessions.sessions()


# ---- GitHub, faked with respx --------------------------------------------------------------


class RespxBridge(httpx2.AsyncBaseTransport):
    """Authlib's httpx2 requests answered by a respx router (which speaks httpx)."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        content = await request.aread()
        forwarded = httpx.Request(
            request.method, str(request.url), headers=request.headers.raw, content=content
        )
        response = await self.router.async_handler(forwarded)
        body = await response.aread()
        return httpx2.Response(response.status_code, headers=response.headers.raw, content=body)


@dataclass
class FakeGitHub:
    """GitHub's token endpoint (one-time codes, PKCE, refresh) and user API, in memory."""

    users: dict[str, dict[str, Any]]
    client_secret: str = CLIENT_SECRET
    refresh_delay: float = 0.0
    refresh_error: tuple[int, str] | None = None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    refresh_calls: int = 0
    issued: list[str] = field(default_factory=list)
    router: respx.MockRouter = field(init=False)

    def __post_init__(self) -> None:
        self.router = respx.MockRouter(assert_all_called=False)
        self.router.post(GITHUB_TOKEN_URL).mock(side_effect=self._token)
        for path in ("/user", "/user/orgs", "/user/emails"):
            route = self.router.route(method="GET", host="api.github.com", path=path)
            route.mock(side_effect=self._api)

    def authorize(self, location: str, login: str) -> dict[str, str]:
        """What GitHub does when ``login`` approves: a code bound to PKCE and the redirect."""
        assert location.startswith(GITHUB_AUTHORIZE_URL + "?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert params["code_challenge_method"] == "S256"
        code = secrets.token_hex(10)
        self.codes[code] = {**params, "login": login}
        return {"code": code, "state": params["state"]}

    def _issue(self, login: str) -> httpx.Response:
        access, refresh = "gho_" + secrets.token_hex(16), "ghr_" + secrets.token_hex(16)
        self.access[access], self.refresh[refresh] = login, login
        self.issued += [access, refresh]
        token = {"access_token": access, "token_type": "bearer", "scope": "read:user"}
        return httpx.Response(200, json=token | {"expires_in": 28800, "refresh_token": refresh})

    async def _token(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        if form.get("client_secret") != self.client_secret:
            return httpx.Response(200, json={"error": "incorrect_client_credentials"})
        if form.get("grant_type") == "refresh_token":
            self.refresh_calls += 1
            await asyncio.sleep(self.refresh_delay)
            if self.refresh_error is not None:
                status, error = self.refresh_error
                return httpx.Response(status, json={"error": error})
            login = self.refresh.pop(form.get("refresh_token", ""), None)
            if login is None:
                return httpx.Response(200, json={"error": "bad_refresh_token"})
            return self._issue(login)
        grant = self.codes.pop(form.get("code", ""), None)  # one use only
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return httpx.Response(200, json={"error": "bad_verification_code"})
        verifier = form.get("code_verifier", "").encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if challenge.decode() != grant["code_challenge"]:
            return httpx.Response(200, json={"error": "invalid_grant"})
        return self._issue(grant["login"])

    def _api(self, request: httpx.Request) -> httpx.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        login = self.access.get(token) if scheme.lower() == "bearer" else None
        if login is None:
            return httpx.Response(401, json={"message": "Bad credentials"})
        user = self.users[login]
        if request.url.path == "/user/orgs":
            return httpx.Response(200, json=[{"login": org} for org in user.get("orgs", [])])
        if request.url.path == "/user/emails":
            return httpx.Response(200, json=user.get("emails", []))
        return httpx.Response(200, json={"login": login, "id": user["id"]})


USERS = {
    "octocat": {
        "id": 1,
        "orgs": ["Acme"],
        "emails": [{"email": "o@acme.example", "verified": True}],
    },
    "hubot": {"id": 2, "orgs": ["acme"]},
    "mallory": {
        "id": 666,
        "orgs": ["evil"],
        "emails": [{"email": "m@acme.example", "verified": False}],
    },
    # GitHub allows all-digit logins: this one spells another user's numeric id.
    "583231": {"id": 4242, "orgs": ["acme"]},
    "monalisa": {"id": 583231, "orgs": ["acme"]},
}


@dataclass
class GitHubProxy:
    client: httpx.AsyncClient
    login: OAuthLogin
    fake: FakeGitHub
    app: Starlette

    async def flood_logins(self, count: int, address: str, **headers: str) -> None:
        """``count`` logins started from ``address``, each without the last one's cookie."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=self.client.base_url) as bot:
            for _ in range(count):
                bot.cookies.clear()
                assert (await bot.get("/llm/auth/login/github", headers=headers)).status_code == 302

    async def sign_in(self, user: str, **params: str) -> httpx.Response:
        start = await self.client.get("/llm/auth/login/github", params=params)
        assert start.status_code == 302, start.text
        query = self.fake.authorize(start.headers["location"], user)
        return await self.client.get("/llm/auth/callback/github", params=query)


AUTH_KEYS = ("trust_proxy_headers", "public_url", "allowed_hosts")


@contextlib.asynccontextmanager
async def github_proxy(
    tmp_path: Path, *, base_url: str = "http://testserver", **github: Any
) -> AsyncIterator[GitHubProxy]:
    """The proxy with a GitHub login (``[auth]`` keys go to ``[auth]``, the rest to
    ``[auth.oauth.github]``), and a browser on ``base_url``, whose host ASGI's
    ``scope["server"]`` names (as a real server names the address it listens on)."""
    settings = {"client_id": "gh-client", "client_secret": CLIENT_SECRET, "allowed_orgs": ["acme"]}
    auth = {k: github.pop(k) for k in AUTH_KEYS if k in github}
    config = proxy_config(tmp_path, {"github": settings | github}, **auth)
    proxy = build_proxy(config)
    fake = FakeGitHub(USERS)
    login = oauth_login(proxy)
    login.transport = RespxBridge(fake.router)
    app = host(proxy)
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield GitHubProxy(client, login, fake, app)


SAME_ORIGIN = {"origin": "http://testserver"}


@pytest.mark.anyio
async def test_github_login_by_org_with_admin(tmp_path: Path) -> None:
    async with github_proxy(tmp_path, admin_users=["login:OctoCat"]) as gh:
        start = await gh.client.get("/llm/auth/login/github")
        params = parse_qs(urlsplit(start.headers["location"]).query)
        assert params["redirect_uri"] == ["http://testserver/llm/auth/callback/github"]
        assert params["scope"] == ["read:user user:email read:org"]
        assert params["client_id"] == ["gh-client"]

        done = await gh.sign_in("octocat")
        assert done.status_code == 303 and done.headers["location"] == "/llm/"
        me = (await gh.client.get("/llm/auth/me")).json()
        assert (me["name"], me["admin"], me["subject"]) == ("octocat", True, "github:1")
        chat = await gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=SAME_ORIGIN)
        assert chat.status_code == 200

        gh.client.cookies.clear()
        assert (await gh.sign_in("hubot")).status_code == 303
        assert (await gh.client.get("/llm/auth/me")).json()["admin"] is False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("entry", "admin", "not_admin"),
    [("id:583231", "monalisa", "583231"), ("login:583231", "583231", "monalisa")],
)
async def test_an_all_digit_login_is_not_the_user_with_that_id(
    tmp_path: Path, entry: str, admin: str, not_admin: str
) -> None:
    async with github_proxy(tmp_path, admin_users=[entry]) as gh:
        for user, expected in ((admin, True), (not_admin, False)):
            gh.client.cookies.clear()
            assert (await gh.sign_in(user)).status_code == 303
            me = (await gh.client.get("/llm/auth/me")).json()
            assert (me["name"], me["admin"]) == (user, expected)


@pytest.mark.anyio
async def test_email_entries_match_verified_addresses_only(tmp_path: Path) -> None:
    admins = ["email:O@Acme.Example", "email:m@acme.example"]
    async with github_proxy(tmp_path, allowed_orgs=[], admin_users=admins) as gh:
        assert (await gh.sign_in("octocat")).status_code == 303
        assert (await gh.client.get("/llm/auth/me")).json()["admin"] is True
        gh.client.cookies.clear()
        assert (await gh.sign_in("mallory")).status_code == 403  # m@acme.example: unverified


@pytest.mark.anyio
async def test_github_user_outside_the_allowed_orgs_is_refused(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        refused = await gh.sign_in("mallory")
        assert refused.status_code == 403
        assert (await gh.client.get("/llm/auth/me")).status_code == 401


@pytest.mark.anyio
async def test_allowed_domains_need_a_verified_address(tmp_path: Path) -> None:
    async with github_proxy(tmp_path, allowed_orgs=[], allowed_domains=["acme.example"]) as gh:
        assert (await gh.sign_in("mallory")).status_code == 403  # unverified address
        assert (await gh.sign_in("octocat")).status_code == 303


@pytest.mark.anyio
async def test_wrong_pkce_verifier_is_refused(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        start = await gh.client.get("/llm/auth/login/github")
        query = gh.fake.authorize(start.headers["location"], "octocat")
        (pending,) = gh.login.sessions.sessions()
        pending.data[f"_state_github_{query['state']}"]["data"]["code_verifier"] = "x" * 48
        refused = await gh.client.get("/llm/auth/callback/github", params=query)
        assert refused.status_code == 400
        assert "invalid_grant" in refused.json()["error"]["message"]
        assert (await gh.client.get("/llm/auth/me")).status_code == 401


@pytest.mark.anyio
async def test_a_login_flood_from_one_address_leaves_anothers_login_alone(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        gh.login.sessions.max_pending = 30  # the global cap, small enough to reach here
        start = await gh.client.get("/llm/auth/login/github")  # from 127.0.0.1
        await gh.flood_logins(100, "198.51.100.7")
        query = gh.fake.authorize(start.headers["location"], "octocat")
        assert (await gh.client.get("/llm/auth/callback/github", params=query)).status_code == 303
        assert len(gh.login.sessions) <= 1 + 10  # the flood kept its own 10 newest


@pytest.mark.anyio
async def test_behind_a_trusted_proxy_a_flood_is_told_apart_by_x_forwarded_for(
    tmp_path: Path,
) -> None:
    # Every browser comes through the reverse proxy's one address; it appends the address it
    # saw to x-forwarded-for, after whatever the client claimed there.
    async with github_proxy(tmp_path, trust_proxy_headers=True) as gh:
        gh.login.sessions.max_pending = 30
        victim = {"x-forwarded-for": "203.0.113.5"}
        start = await gh.client.get("/llm/auth/login/github", headers=victim)
        for i in range(10):  # the flooder varies what it claims, not what the proxy saw
            await gh.flood_logins(10, "127.0.0.1", x_forwarded_for=f"10.0.{i}.1, 198.51.100.7")
        query = gh.fake.authorize(start.headers["location"], "octocat")
        callback = await gh.client.get("/llm/auth/callback/github", params=query, headers=victim)
        assert callback.status_code == 303
        assert len(gh.login.sessions) <= 1 + 10


@pytest.mark.anyio
async def test_github_code_used_twice_is_refused(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        start = await gh.client.get("/llm/auth/login/github")
        first = gh.fake.authorize(start.headers["location"], "octocat")
        code_verifier = next(
            d["data"]["code_verifier"]
            for s in gh.login.sessions.sessions()
            for k, d in s.data.items()
            if k.startswith("_state_github_")
        )
        assert (await gh.client.get("/llm/auth/callback/github", params=first)).status_code == 303
        assert first["code"] not in gh.fake.codes  # GitHub has consumed it
        gh.client.cookies.clear()
        start = await gh.client.get("/llm/auth/login/github")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        again = await gh.client.get(
            "/llm/auth/callback/github", params={"code": first["code"], "state": state}
        )
        assert again.status_code == 400
        assert "bad_verification_code" in again.json()["error"]["message"]
        assert code_verifier not in again.text


@pytest.mark.anyio
async def test_cookie_post_from_another_origin_is_refused(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        for headers in ({"origin": "https://evil.example"}, {"origin": "null"}, {}):
            post = await gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=headers)
            assert post.status_code == 401
        get = await gh.client.get("/llm/v1/models", headers={"origin": "https://evil.example"})
        assert get.status_code == 200  # safe methods may come from anywhere


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["PROPFIND", "QUERY", "PURGE", "MKCOL"])
async def test_cookie_requests_of_other_methods_from_another_origin_are_refused(
    tmp_path: Path, method: str
) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        evil = {"origin": "https://evil.example"}
        path = "/llm/v1/chat/completions"
        foreign = await gh.client.request(method, path, json=CHAT, headers=evil)
        assert foreign.status_code == 401, foreign.text
        assert foreign.json()["error"]["type"] == "authentication_error"
        own = await gh.client.request(method, path, json=CHAT, headers=SAME_ORIGIN)
        assert own.status_code != 401, own.text


@pytest.mark.anyio
async def test_minting_tokens_by_session_is_same_origin_only(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        mint = {"name": "laptop"}
        evil = {"origin": "https://evil.example"}
        refused = await gh.client.post("/llm/auth/tokens", json=mint, headers=evil)
        assert refused.status_code == 401
        minted = await gh.client.post("/llm/auth/tokens", json=mint, headers=SAME_ORIGIN)
        assert minted.status_code == 201, minted.text


@pytest.mark.anyio
async def test_refresh_is_single_flight_under_20_concurrent_requests(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        session = signed_in(gh.login, "octocat")
        assert session.token is not None
        before = session.token["access_token"]
        session.token["expires_at"] = time.time() + 10  # due: inside the 60 s margin
        gh.fake.refresh_delay = 0.05

        async def call() -> int:
            post = gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=SAME_ORIGIN)
            return (await post).status_code

        statuses = await asyncio.gather(*(call() for _ in range(20)))
        assert statuses == [200] * 20
        assert gh.fake.refresh_calls == 1
        assert session.token["access_token"] != before
        assert session.token["expires_at"] > time.time() + 3600


@pytest.mark.anyio
@pytest.mark.parametrize("refusal", [(400, "invalid_grant"), (200, "bad_refresh_token")])
async def test_invalid_grant_ends_the_session(tmp_path: Path, refusal: tuple[int, str]) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        session = signed_in(gh.login, "octocat")
        assert session.token is not None
        session.token["expires_at"] = time.time() + 10
        gh.fake.refresh_error = refusal
        post = await gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=SAME_ORIGIN)
        assert post.status_code == 401
        assert gh.login.sessions.sessions() == []
        assert (await gh.client.get("/llm/auth/me")).status_code == 401


@pytest.mark.anyio
async def test_a_transient_refresh_failure_keeps_the_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        session = signed_in(gh.login, "octocat")
        assert session.token is not None
        session.token["expires_at"] = time.time() + 10
        gh.fake.refresh_error = (503, "temporarily_unavailable")
        for _ in range(3):
            post = await gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=SAME_ORIGIN)
            assert post.status_code == 200
        assert gh.fake.refresh_calls == 1  # retried only after the retry interval
        assert "refresh" in logged(caplog)


async def redirect_uri_of(gh: GitHubProxy, **headers: str) -> str:
    start = await gh.client.get("/llm/auth/login/github", headers=headers)
    assert start.status_code == 302, start.text
    (redirect_uri,) = parse_qs(urlsplit(start.headers["location"]).query)["redirect_uri"]
    return redirect_uri


FORWARDED = {"x-forwarded-proto": "https", "x-forwarded-host": "llm.example.com"}
FORGED = {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}


@pytest.mark.anyio
async def test_redirect_uri_from_config(tmp_path: Path) -> None:
    configured = "https://llm.example.com/base/auth/callback/github"
    async with github_proxy(tmp_path, redirect_uri=configured) as gh:
        start = await gh.client.get("/llm/auth/login/github", headers=FORWARDED)
        params = parse_qs(urlsplit(start.headers["location"]).query)
        assert params["redirect_uri"] == [configured]
        assert "Secure" not in start.headers["set-cookie"]  # proxy headers are not trusted


@pytest.mark.anyio
async def test_a_forged_host_does_not_steer_the_redirect_uri(tmp_path: Path) -> None:
    # Neither redirect_uri nor public_url: the address the server listens on, never a header.
    own = "http://testserver/llm/auth/callback/github"
    async with github_proxy(tmp_path) as gh:
        assert await redirect_uri_of(gh, host="evil.example") == own
        assert await redirect_uri_of(gh, **FORGED) == own
    async with github_proxy(tmp_path, trust_proxy_headers=True) as gh:  # no allowed_hosts
        assert await redirect_uri_of(gh, host="evil.example") == own
        assert await redirect_uri_of(gh, **FORGED) == own


@pytest.mark.anyio
async def test_on_a_unix_socket_without_public_url_the_login_says_what_to_set(
    tmp_path: Path,
) -> None:
    async with github_proxy(tmp_path) as gh:

        async def on_a_unix_socket(scope: Any, receive: Any, send: Any) -> None:
            await gh.app({**scope, "server": ("/run/llm-proxy.sock", None)}, receive, send)

        transport = httpx.ASGITransport(app=on_a_unix_socket)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            refused = await client.get("/llm/auth/login/github")
        assert refused.status_code == 400
        assert "set public_url" in refused.json()["error"]["message"]


@pytest.mark.anyio
async def test_trusted_proxy_headers_name_only_allowed_hosts(tmp_path: Path) -> None:
    allowed = ["llm.example.com"]
    async with github_proxy(tmp_path, trust_proxy_headers=True, allowed_hosts=allowed) as gh:
        start = await gh.client.get("/llm/auth/login/github", headers=FORWARDED)
        params = parse_qs(urlsplit(start.headers["location"]).query)
        assert params["redirect_uri"] == ["https://llm.example.com/llm/auth/callback/github"]
        assert "; Secure" in start.headers["set-cookie"]
        for headers in (FORGED, {"host": "evil.example"}, {}):
            refused = await gh.client.get("/llm/auth/login/github", headers=headers)
            assert refused.status_code == 400, refused.text
            assert "allowed_hosts" in refused.json()["error"]["message"]
    async with github_proxy(tmp_path, allowed_hosts=["LLM.example.com"]) as gh:
        # Without trust_proxy_headers the allow list checks the Host header itself.
        own = "http://llm.example.com/llm/auth/callback/github"
        assert await redirect_uri_of(gh, host="llm.example.com", **FORGED) == own


@pytest.mark.anyio
async def test_public_url_is_the_origin_of_redirects_and_of_the_same_origin_check(
    tmp_path: Path,
) -> None:
    public = "https://llm.example.com/llm"
    async with github_proxy(tmp_path, public_url=public, base_url="https://10.0.0.7") as gh:
        assert await redirect_uri_of(gh, host="evil.example") == f"{public}/auth/callback/github"
        assert (await gh.sign_in("octocat")).status_code == 303
        path = "/llm/v1/chat/completions"
        own = await gh.client.post(path, json=CHAT, headers={"origin": "https://llm.example.com"})
        assert own.status_code == 200, own.text
        for origin, forged_host in (
            ("https://10.0.0.7", None),
            ("https://evil.example", "evil.example"),
        ):
            headers = {"origin": origin} | ({"host": forged_host} if forged_host else {})
            refused = await gh.client.post(path, json=CHAT, headers=headers)
            assert refused.status_code == 401, origin


@pytest.mark.anyio
async def test_a_forged_host_cannot_make_a_foreign_origin_look_same_origin(
    tmp_path: Path,
) -> None:
    async with github_proxy(tmp_path) as gh:
        await gh.sign_in("octocat")
        forged = {"host": "evil.example", "origin": "http://evil.example"}
        post = await gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=forged)
        assert post.status_code == 401


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({}, True),
        ({"trust_proxy_headers": True}, True),
        ({"public_url": "https://llm.example.com/llm"}, False),
        ({"redirect_uri": "https://llm.example.com/llm/auth/callback/github"}, False),
        ({"trust_proxy_headers": True, "allowed_hosts": ["llm.example.com"]}, False),
    ],
)
def test_a_public_origin_left_to_chance_is_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, settings: dict[str, Any], warned: bool
) -> None:
    github = {"client_id": "c", "client_secret": CLIENT_SECRET, "allowed_orgs": ["acme"]}
    auth = {k: settings.pop(k) for k in AUTH_KEYS if k in settings}
    with caplog.at_level(logging.WARNING, logger="llm_proxy_mw"):
        build_proxy(proxy_config(tmp_path, {"github": github | settings}, **auth))
    warnings = [r.getMessage() for r in caplog.records if "public_url" in r.getMessage()]
    assert bool(warnings) is warned, warnings


@pytest.mark.anyio
async def test_endpoints_refuse_unknown_providers_and_methods(tmp_path: Path) -> None:
    async with github_proxy(tmp_path) as gh:
        assert (await gh.client.get("/llm/auth/login/gitlab")).status_code == 404
        assert (await gh.client.get("/llm/auth/callback/gitlab")).status_code == 404
        wrong = await gh.client.get("/llm/auth/logout")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert (await gh.client.post("/llm/auth/me")).status_code == 405
        assert (await gh.client.post("/llm/auth/logout")).status_code == 204  # no session
        me = await gh.client.get("/llm/auth/me")
        assert me.status_code == 401 and "www-authenticate" in me.headers


@pytest.mark.anyio
async def test_no_secret_in_logs_or_error_bodies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    async with github_proxy(tmp_path) as gh:
        bodies.append((await gh.sign_in("octocat")).text)
        cookie = gh.client.cookies["llm_proxy_session"]
        session = signed_in(gh.login, "octocat")
        assert session.token is not None
        session.token["expires_at"] = time.time() + 10
        chat = await gh.client.post("/llm/v1/chat/completions", json=CHAT, headers=SAME_ORIGIN)
        bodies.append(chat.text)
        bodies.append((await gh.sign_in("mallory")).text)
        gh.fake.client_secret = "rotated"  # the exchange now fails at the provider
        bodies.append((await gh.sign_in("octocat")).text)
        bodies.append((await gh.client.get("/llm/auth/callback/github?state=x&code=y")).text)
    text = logged(caplog) + "\n".join(bodies)
    for secret in (CLIENT_SECRET, SESSION_SECRET, cookie, *gh.fake.issued):
        assert secret not in text
    assert "code_verifier" not in logged(caplog)


def test_public_presets_need_an_allow_list(tmp_path: Path) -> None:
    for name, preset in (("github", None), ("corp", "google"), ("auth0", None)):
        idp = {"client_id": "c", "client_secret": "s", "preset": preset, "domain": "t.auth0.com"}
        with pytest.raises(ConfigError, match="allowed_users"):
            build_proxy(proxy_config(tmp_path, {name: idp}))


# ---- OpenID Connect ID tokens, faked with respx --------------------------------------------

SSO = "https://sso.example"
SSO_KEY = RSAKey.generate_key(2048, parameters={"kid": "sso-1"})
STRANGER_KEY = RSAKey.generate_key(2048, parameters={"kid": "sso-1"})


@dataclass
class FakeOidc:
    """An OpenID provider whose ID token the test shapes: metadata, JWKS, token endpoint."""

    id_token_claims: dict[str, Any] = field(default_factory=dict)
    signing_key: Any = field(default_factory=lambda: SSO_KEY)
    metadata_status: int = 200
    with_id_token: bool = True
    nonces: dict[str, str] = field(default_factory=dict)
    router: respx.MockRouter = field(init=False)

    def __post_init__(self) -> None:
        self.router = respx.MockRouter(assert_all_called=False)
        self.router.get(f"{SSO}/.well-known/openid-configuration").mock(side_effect=self._metadata)
        self.router.get(f"{SSO}/jwks").mock(
            return_value=httpx.Response(200, json=KeySet([SSO_KEY]).as_dict(private=False))
        )
        self.router.post(f"{SSO}/token").mock(side_effect=self._token)

    def _metadata(self, request: httpx.Request) -> httpx.Response:
        metadata = {
            "issuer": SSO,
            "authorization_endpoint": f"{SSO}/authorize",
            "token_endpoint": f"{SSO}/token",
            "jwks_uri": f"{SSO}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        return httpx.Response(self.metadata_status, json=metadata)

    def authorize(self, location: str) -> dict[str, str]:
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        code = secrets.token_hex(8)
        self.nonces[code] = params["nonce"]
        return {"code": code, "state": params["state"]}

    def _token(self, request: httpx.Request) -> httpx.Response:
        code = parse_qs(request.content.decode())["code"][0]
        now = int(time.time())
        claims = {
            "iss": SSO,
            "aud": "sso-client",
            "sub": "u-42",
            "email": "Ada@Example.com",
            "email_verified": True,
            "nonce": self.nonces.pop(code),
            "iat": now,
            "exp": now + 300,
        } | self.id_token_claims
        claims = {k: v for k, v in claims.items() if v is not None}
        body: dict[str, Any] = {"access_token": "at-" + code, "token_type": "Bearer"}
        if self.with_id_token:
            header = {"alg": "RS256", "kid": "sso-1"}
            body["id_token"] = jwt.encode(header, claims, self.signing_key)
        return httpx.Response(200, json=body)


@contextlib.asynccontextmanager
async def sso_proxy(tmp_path: Path, fake: FakeOidc) -> AsyncIterator[httpx.AsyncClient]:
    sso = {
        "client_id": "sso-client",
        "client_secret": CLIENT_SECRET,
        "server_metadata_url": f"{SSO}/.well-known/openid-configuration",
        "admin_users": ["email:ada@example.com"],
    }
    proxy = build_proxy(proxy_config(tmp_path, {"sso": sso}))
    oauth_login(proxy).transport = RespxBridge(fake.router)
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=host(proxy))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def sso_sign_in(client: httpx.AsyncClient, fake: FakeOidc) -> httpx.Response:
    start = await client.get("/llm/auth/login/sso")
    assert start.status_code == 302, start.text
    return await client.get(
        "/llm/auth/callback/sso", params=fake.authorize(start.headers["location"])
    )


@pytest.mark.anyio
async def test_oidc_identity_comes_from_the_verified_id_token(tmp_path: Path) -> None:
    fake = FakeOidc()
    async with sso_proxy(tmp_path, fake) as client:
        assert (await sso_sign_in(client, fake)).status_code == 303
        me = (await client.get("/llm/auth/me")).json()
        assert (me["name"], me["subject"], me["admin"]) == ("ada@example.com", "sso:u-42", True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "id_token",
    [
        {"nonce": "replayed-nonce"},
        {"aud": "another-client", "azp": "sso-client"},
        {"aud": "another-client"},
        {"iss": "https://sso.example.evil"},
        {"exp": int(time.time()) - 3600},
        {"sub": None},
        {"signed_by_a_stranger": True},
        {"no_id_token": True},
    ],
)
async def test_a_bad_id_token_is_refused(tmp_path: Path, id_token: dict[str, Any]) -> None:
    fake = FakeOidc(id_token_claims=id_token)
    if id_token.pop("signed_by_a_stranger", False):
        fake.signing_key = STRANGER_KEY
    fake.with_id_token = not id_token.pop("no_id_token", False)
    async with sso_proxy(tmp_path, fake) as client:
        refused = await sso_sign_in(client, fake)
        assert refused.status_code == 400, refused.text
        assert (await client.get("/llm/auth/me")).status_code == 401


@pytest.mark.anyio
async def test_an_unreachable_provider_is_a_502(tmp_path: Path) -> None:
    fake = FakeOidc(metadata_status=503)
    async with sso_proxy(tmp_path, fake) as client:
        failed = await client.get("/llm/auth/login/sso")
        assert failed.status_code == 502
        assert CLIENT_SECRET not in failed.text


# ---- presets -------------------------------------------------------------------------------


def test_preset_registration() -> None:
    auth0 = OAuthConfig(
        client_id="c", client_secret="s", domain="t.eu.auth0.com", admin_users=["sub:a"]
    )
    registered = client_registration("auth0", auth0)
    assert (
        registered["server_metadata_url"]
        == "https://t.eu.auth0.com/.well-known/openid-configuration"
    )
    assert registered["client_kwargs"]["code_challenge_method"] == "S256"
    google = OAuthConfig(client_id="c", client_secret="s", scope="email", allowed_domains=["x.io"])
    registered = client_registration("google", google)
    assert registered["server_metadata_url"] == GOOGLE_METADATA_URL
    assert registered["client_kwargs"]["scope"] == "openid email"  # OIDC needs "openid"
    bad = OAuthConfig(
        client_id="c", client_secret="s", domain="evil.example/x?", admin_users=["sub:a"]
    )
    with pytest.raises(ConfigError, match="domain"):
        client_registration("auth0", bad)


def test_identities_and_allow_lists() -> None:
    assert oidc_identity({"sub": "u", "email": "A@X.io", "email_verified": True}).emails == (
        "a@x.io",
    )
    assert oidc_identity({"sub": "u", "email": "a@x.io"}).emails == ()  # unverified
    with pytest.raises(ValueError):
        oidc_identity({"email": "a@x.io"})
    anyone = OAuthConfig(client_id="c", client_secret="s", server_metadata_url="https://i/x")
    assert is_allowed(anyone, Identity(subject="u"))  # an organisation's own issuer
    listed = OAuthConfig(client_id="c", client_secret="s", allowed_users=["sub:Sub-1"])
    assert is_allowed(listed, Identity(subject="Sub-1"))
    assert not is_allowed(listed, Identity(subject="sub-1"))  # subjects are case-sensitive
    assert not is_admin(listed, Identity(subject="Sub-1"))


def test_stored_token_keeps_only_what_a_refresh_needs() -> None:
    response = {"access_token": "a", "expires_in": 60, "id_token": "x", "token_type": "bearer"}
    kept = stored_token(response, {"refresh_token": "r"}, 1000.0)
    assert kept == {
        "access_token": "a",
        "token_type": "bearer",
        "expires_at": 1060.0,
        "refresh_token": "r",
    }


@pytest.mark.anyio
async def test_shutdown_cancels_refreshes_in_flight() -> None:
    refresher = SessionRefresher({})
    session = Session(id="s", expires_at=time.time() + 60)
    session.refresh = asyncio.get_running_loop().create_task(asyncio.sleep(60, result=True))
    await refresher.aclose([session, Session(id="t", expires_at=0)])
    assert session.refresh.cancelled()
    assert await refresher(session)  # no token: nothing to refresh
