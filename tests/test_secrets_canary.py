"""No secret ever leaks: a canary for every secret the proxy holds or sees, the whole traffic
logged at DEBUG with forced upstream errors, and not one occurrence wherever a secret could
surface.

Canaries, random per run: the provider keys (an openai- and an anthropic-kind provider, and a
credential header), a provider's OAuth2 client secret and the access token its token endpoint
issues, client API keys (admin and not) and a wrong one, bearer tokens that are garbage or
expired, the proxy-issued access and refresh tokens (minted, used, rotated, revoked,
introspected, a rotated refresh token replayed), the token signing key, an OAuth login client
secret, the session secret, the identity provider's tokens and an authorization code, and a
query secret (``?key=``). Each is looked for raw, URL-encoded, JSON-escaped, in its halves,
and base64-encoded at every alignment (as inside an HTTP Basic credential).

Looked for in every log record of every logger at DEBUG (message, arguments, extra fields,
exception text with its chain), every response header and body a client received (except the
token endpoints' answers to the caller they issue tokens to), every exception a client raised,
the Prometheus exposition, and the store on disk. Twice: ``build_proxy`` in process with its
lifespan entered, and the example app in a real uvicorn process with uvicorn's own logging
config at DEBUG, whose stdout and stderr are read; there the access log and the refused
websocket handshake quote URLs with their query strings, which ``RedactQuerySecrets``
(installed by the example app) must mask.

Upstreams are real servers on loopback: ``FakeProvider`` and a fake identity provider (OIDC
metadata, the login's token endpoint, a client credentials token endpoint) whose error answers
quote the secrets they were sent, as careless servers do.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

import httpx
import httpx2
import openai
import pytest
import uvicorn.config
import uvicorn.logging
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from llm_proxy_mw import build_proxy
from llm_proxy_mw.auth._signing_key import SigningKey
from llm_proxy_mw.client import InvalidGrantError, ProxyTokenAuth
from llm_proxy_mw.config import ConfigError, parse_config
from llm_proxy_mw.logging_filters import QUERY_SECRETS, RedactQuerySecrets
from tests.fakes.processes import stop_process
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer
from tests.fakes.servers import UvicornServer
from tests.hardening_helpers import RefusingPort

ROOT = Path(__file__).resolve().parent.parent
GPT, CLAUDE, GPT_OAUTH, GPT_BROKEN, GPT_DOWN = "gpt-c", "claude-c", "gpt-oauth", "gpt-x", "gpt-down"
TIMEOUT = 10.0
#: Loggers set to DEBUG besides the root (uvicorn sets levels of its own; the others are
#: named so that a library's own level cannot hide a record).
LOGGERS = (
    "llm_proxy_mw",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "aiohttp",
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "authlib",
    "joserfc",
    "asyncio",
    "starlette",
)


def chat(model: str = GPT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def messages(**extra: Any) -> dict[str, Any]:
    return {"max_tokens": 16, **chat(CLAUDE), **extra}


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# ---- canaries and where to look for them ---------------------------------------------------


def _canary(label: str) -> str:
    """Unguessable; "+" and "/" make its URL-encoded forms differ from it."""
    return f"cnry-{label}-{secrets.token_urlsafe(12)}+/{secrets.token_urlsafe(12)}"


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


class Canaries:
    """Every secret of one run, by label; ``issue`` adds the tokens the proxy issues."""

    def __init__(self) -> None:
        labels = (
            "openai_key",
            "anthropic_key",
            "provider_header",
            "provider_client_secret",
            "provider_access_token",
            "broken_client_secret",
            "admin_key",
            "user_key",
            "wrong_key",
            "login_client_secret",
            "session_secret",
            "idp_access_token",
            "idp_refresh_token",
            "auth_code",
            "query_secret",
        )
        self.values = {label: _canary(label.replace("_", "-")) for label in labels}
        self.signing_jwk = SigningKey.generate("EdDSA").to_jwk()
        self.values["signing_key_d"] = json.loads(self.signing_jwk)["d"]
        # Shaped like our tokens, so that it reaches the signature check.
        header = {"alg": "EdDSA", "typ": "at+jwt", "kid": SigningKey.generate("EdDSA").kid}
        parts = [_b64url(json.dumps(header)), _b64url('{"sub":"root"}')]
        self.values["garbage_bearer"] = ".".join([*parts, secrets.token_urlsafe(64)])
        expired = SigningKey.from_jwk(self.signing_jwk, "EdDSA").sign(
            {
                "iss": "llm_proxy_mw",
                "aud": "llm_proxy_mw",
                "sub": "api_key:root",
                "exp": int(time.time()) - 3600,
                "iat": int(time.time()) - 7200,
                "nbf": int(time.time()) - 7200,
                "jti": secrets.token_urlsafe(16),
                "fam": "tf_expired",
                "adm": True,
                "scope": "",
            }
        )
        self.values["expired_token"] = expired

    def __getattr__(self, label: str) -> str:
        try:
            return self.__dict__["values"][label]
        except KeyError:
            raise AttributeError(label) from None

    def issue(self, label: str, value: str) -> None:
        """A token the proxy issued: a canary from now on, wherever it did not go."""
        self.values.setdefault(f"{label}#{len(self.values)}", value)

    def env(self) -> dict[str, str]:
        """The canaries as environment variables, for a config that references them."""
        return {f"CANARY_{k.upper()}": v for k, v in self.values.items()} | {
            "CANARY_SIGNING_JWK": self.signing_jwk
        }


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def forms(secret: str) -> set[str]:
    """How a secret may appear: raw, URL-encoded, JSON-escaped, either of its halves, and
    base64 of each at any of the three alignments inside a longer base64 string (the first
    and last four characters depend on the neighbouring bytes, so they are left out)."""
    texts = {secret, quote(secret, safe=""), quote_plus(secret), secret.replace("/", "\\/")}
    found = set(texts) | {part for part in re.split(r"[+/]", secret) if len(part) >= 16}
    if secret.count(".") == 2:
        found.add(secret.rsplit(".", 1)[1])  # a JWT's signature alone
    for text in texts:
        for offset in range(3):
            encoded = base64.b64encode(b"\0" * offset + text.encode())[4 if offset else 0 : -4]
            found |= {encoded.decode(), encoded.translate(_URLSAFE).decode()}
    return found


@dataclass
class Exposure:
    """One place that must hold no canary: a log record, a response, an exception..."""

    where: str
    text: str


@dataclass
class Seen:
    """Everything that surfaced during a scenario."""

    exposures: list[Exposure] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.exposures.append(Exposure(where, text))

    def exception(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc)) + repr(exc)
        body = getattr(exc, "body", None)
        self.add(f"raised {type(exc).__name__}", f"{text}\n{body!r}")

    def leaks(self, canaries: Canaries) -> list[str]:
        """``where: label: excerpt`` for every canary form found anywhere."""
        table = {label: forms(value) for label, value in canaries.values.items()}
        found = []
        for exposure in self.exposures:
            for label, variants in table.items():
                hit = next((v for v in variants if v in exposure.text), None)
                if hit is not None:
                    at = exposure.text.index(hit)
                    excerpt = exposure.text[max(0, at - 120) : at + len(hit) + 40]
                    found.append(f"{exposure.where}: {label}: ...{excerpt}...")
        return found


def response_text(response: httpx.Response | httpx2.Response, canaries: Canaries) -> str:
    """Status, headers and body as the client got them. The pair a token endpoint issues to
    its caller is the one secret a response may carry: registered as canaries, blanked."""
    body = response.content.decode("latin-1")
    request = response.request
    issuing = request.method == "POST" and request.url.path.endswith(
        ("/auth/tokens", "/auth/token")
    )
    if issuing and response.status_code in (200, 201):
        payload = response.json()
        for name in ("access_token", "refresh_token"):
            canaries.issue(name, payload[name])
            body = body.replace(payload[name], f"<issued {name}>")
    headers = "\n".join(
        f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in response.headers.raw
    )
    return f"{response.status_code}\n{headers}\n\n{body}"


# ---- log capture ---------------------------------------------------------------------------

_FORMATTER = logging.Formatter("%(threadName)s %(name)s %(levelname)s %(message)s")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def render(record: logging.LogRecord) -> str:
    """A record as any handler could write it: the formatted message with its exception text
    (the whole chain) and stack, its raw message and arguments, and any extra attributes."""
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    return f"{_FORMATTER.format(record)}\n{record.msg!r} {record.args!r} {extra!r}"


class CaptureAll(logging.Handler):
    """Keeps every record, rendered when it is emitted (arguments may change later), but
    those ``skip`` names: records of the test's own clients, which are not the proxy."""

    def __init__(self, seen: Seen, skip: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__(logging.DEBUG)
        self.seen = seen
        self.skip = skip
        self.loggers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.skip(record):
            self.loggers.add(record.name)
            self.seen.add(f"log {record.name} {record.levelname}", render(record))


def not_the_proxy(base_url: str) -> Callable[[logging.LogRecord], bool]:
    """Records of the test's clients (the SDK's logger, httpx's log of the requests they send
    to the proxy) and of the upstream servers' threads (a provider sees its key)."""

    def skip(record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] == "openai" or record.threadName.startswith("uvicorn-"):
            return True
        args = record.args
        return (
            record.name in ("httpx", "httpx2")
            and isinstance(args, tuple)
            and len(args) > 1
            and str(args[1]).startswith(base_url)
        )

    return skip


@contextlib.contextmanager
def capture_logs(
    caplog: pytest.LogCaptureFixture, seen: Seen, skip: Callable[[logging.LogRecord], bool]
) -> Iterator[CaptureAll]:
    """Every logger at DEBUG into ``seen``: the root, and loggers that do not propagate."""
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    handler = CaptureAll(seen, skip)
    loggers = [logging.getLogger()] + [
        lg
        for lg in logging.root.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


# ---- the upstreams -------------------------------------------------------------------------


class FakeIdentityProvider:
    """An OpenID provider's metadata and token endpoint, and a client credentials token
    endpoint for providers. Its errors quote the client secret they were sent."""

    def __init__(self, canaries: Canaries) -> None:
        self.canaries = canaries
        #: How the next code exchanges are answered: "invalid_grant", "tokens" or "crash".
        self.login_answers: deque[str] = deque()
        self.login_secrets: list[str] = []
        self.provider_secrets: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.metadata),
                Route("/jwks", self.jwks),
                Route("/token", self.login_token, methods=["POST"]),
                Route("/provider-token", self.provider_token, methods=["POST"]),
            ]
        )

    async def metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": []})

    async def login_token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        secret = form.get("client_secret", "")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            secret = unquote(base64.b64decode(credentials).decode().partition(":")[2])
        self.login_secrets.append(secret)
        answer = self.login_answers.popleft() if self.login_answers else "invalid_grant"
        if answer == "tokens":
            return JSONResponse(
                {
                    "access_token": self.canaries.idp_access_token,
                    "refresh_token": self.canaries.idp_refresh_token,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "id_token": self.canaries.garbage_bearer,
                }
            )
        if answer == "crash":
            return PlainTextResponse(f"<h1>Internal error</h1>client_secret={secret}", 500)
        description = f"code {form.get('code')} is not valid for client secret {secret}"
        return JSONResponse({"error": "invalid_grant", "error_description": description}, 400)

    async def provider_token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        secret = form.get("client_secret", "")
        self.provider_secrets.append(secret)
        if secret == self.canaries.provider_client_secret:
            token = self.canaries.provider_access_token
            return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 3600})
        description = f"client secret {secret} is not valid"
        return JSONResponse({"error": "invalid_client", "error_description": description}, 401)


@dataclass
class Upstreams:
    canaries: Canaries
    fake: FakeProvider
    fake_url: str
    idp: FakeIdentityProvider
    idp_url: str
    refused_url: str


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    canaries = Canaries()
    fake, idp = FakeProvider(), FakeIdentityProvider(canaries)
    with (
        FakeProviderServer(fake) as fake_server,
        UvicornServer(idp.app) as idp_server,
        RefusingPort() as refused,
    ):
        yield Upstreams(canaries, fake, fake_server.url, idp, idp_server.url, refused.url)


def proxy_config(up: Upstreams, store: Path) -> dict[str, Any]:
    """Every kind of secret, each from a canary; providers pointed at the loopback fakes."""
    c = up.canaries
    # One attempt each, so that each scripted answer meets exactly one request (the retry
    # budget would deny some retries after a run of failures); "down" is retried.
    tuning = {
        "retry": {"max_attempts": 1, "backoff_base": 0.001, "backoff_max": 0.002},
        "timeout": {"connect": 2.0, "read": 5.0, "pool": 2.0},
    }

    def oauth(secret: str) -> dict[str, Any]:
        token_url = f"{up.idp_url}/provider-token"
        return {"token_url": token_url, "client_id": "azure-app", "client_secret": secret}

    openai_kind = {"kind": "openai", "base_url": f"{up.fake_url}/v1", **tuning}
    return {
        "providers": {
            "openai": openai_kind
            | {"api_key": c.openai_key, "headers": {"api-key": c.provider_header}, "models": [GPT]},
            "anthropic": openai_kind
            | {"kind": "anthropic", "api_key": c.anthropic_key, "models": [CLAUDE]},
            "azure": openai_kind
            | {"models": [GPT_OAUTH], "oauth": oauth(c.provider_client_secret)},
            "broken": openai_kind
            | {"models": [GPT_BROKEN], "oauth": oauth(c.broken_client_secret)},
            "down": openai_kind
            | {"base_url": f"{up.refused_url}/v1", "api_key": c.openai_key, "models": [GPT_DOWN]}
            | {"retry": {"max_attempts": 2, "backoff_base": 0.001}},
        },
        "auth": {
            "api_keys": [
                {"name": "root", "key": c.admin_key, "admin": True},
                {"name": "alice", "key": c.user_key},
            ],
            "tokens": {"signing_key": c.signing_jwk, "leeway_seconds": 0},
            "session_secret": c.session_secret,
            "oauth": {
                "corp": {
                    "client_id": "corp-proxy",
                    "client_secret": c.login_client_secret,
                    "server_metadata_url": f"{up.idp_url}/.well-known/openid-configuration",
                }
            },
        },
        "store": {"url": f"sqlite:///{store / 'store.db'}"},
    }


def assert_no_leaks(seen: Seen, canaries: Canaries) -> None:
    leaks = seen.leaks(canaries)
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


# ---- in process: build_proxy with its lifespan entered ------------------------------------

BASE = "http://testserver/llm"


class InProcess:
    """The in-process scenario's traffic; ``status`` is what each named step got back (the
    status code, or the exception the client raised)."""

    def __init__(self, host: Starlette, up: Upstreams, seen: Seen) -> None:
        self.host, self.up, self.c, self.seen = host, up, up.canaries, seen
        self.status: dict[str, int | str] = {}
        self.admin = bearer(self.c.admin_key)
        self.user = {"x-api-key": self.c.user_key}
        self.http = self.client()

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.host)
        hooks = {"response": [self.record]}
        return httpx.AsyncClient(transport=transport, base_url=BASE, event_hooks=hooks, **kwargs)

    async def record(self, response: httpx.Response | httpx2.Response) -> None:
        await response.aread()
        where = f"response {response.request.method} {response.request.url}"
        self.seen.add(where, response_text(response, self.c))

    async def call(self, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        self.status[name] = response.status_code
        return response

    async def scripted(self, name: str, actions: list[Action], path: str, body: Any) -> None:
        """A request whose upstream attempts get ``actions``, one each."""
        self.up.fake.script(*actions)
        await self.call(name, "POST", path, json=body, headers=self.admin)
        assert self.up.fake.pending == 0, f"{name}: scripted answers left over"

    def raised(self, name: str, exc: BaseException) -> None:
        self.status[name] = type(exc).__name__
        self.seen.exception(exc)

    async def proxied(self) -> None:
        """Successes, then every upstream failure and every kind of bad request."""
        c, admin, user = self.c, self.admin, self.user
        query = {"key": c.query_secret}
        await self.call("healthz", "GET", "/healthz")
        await self.call("chat", "POST", "/v1/chat/completions", json=chat(), headers=admin)
        await self.call(
            "chat ?key=", "POST", "/v1/chat/completions", params=query, json=chat(), headers=user
        )
        await self.call("models ?key=", "GET", "/v1/models", params=query, headers=admin)
        await self.call("messages", "POST", "/v1/messages", json=messages(), headers=user)
        stream = chat(stream=True, stream_options={"include_usage": True})
        await self.call("stream", "POST", "/v1/chat/completions", json=stream, headers=admin)
        await self.scripted("stream cut", [Action(cut_after=2)], "/v1/chat/completions", stream)
        await self.scripted(
            "messages stream cut", [Action(cut_after=3)], "/v1/messages", messages(stream=True)
        )
        await self.call(
            "oauth provider", "POST", "/v1/chat/completions", json=chat(GPT_OAUTH), headers=user
        )
        await self.call(
            "oauth refused", "POST", "/v1/chat/completions", json=chat(GPT_BROKEN), headers=user
        )

        masked = f"{c.openai_key[:3]}****{c.openai_key[-4:]}"  # as OpenAI shows a wrong key
        unauthorized = {
            "error": {
                "message": f"Incorrect API key provided: {masked}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        failed = Action(status=500, json_body={"error": {"message": "The server had an error."}})
        with_key = f"/v1/chat/completions?key={quote(c.query_secret, safe='')}"
        await self.scripted("provider 500", [failed], with_key, chat())
        denied = Action(status=401, json_body=unauthorized)
        await self.scripted("provider 401", [denied], "/v1/chat/completions", chat())
        limited = Action(
            status=429, json_body={"error": {"message": "Slow down."}}, headers={"retry-after": "0"}
        )
        await self.scripted("provider 429", [limited], "/v1/chat/completions", chat())
        await self.scripted("anthropic 401", [Action(status=401)], "/v1/messages", messages())
        await self.scripted("anthropic 529", [Action(status=529)], "/v1/messages", messages())
        await self.call(
            "connection refused", "POST", "/v1/chat/completions", json=chat(GPT_DOWN), headers=user
        )
        for name, headers in {
            "wrong key": bearer(c.wrong_key),
            "wrong x-api-key": {"x-api-key": c.wrong_key},
            "garbage bearer": bearer(c.garbage_bearer),
            "expired token": bearer(c.expired_token),
        }.items():
            await self.call(name, "POST", "/v1/chat/completions", json=chat(), headers=headers)
        await self.call(
            "wrong key ?key=", "GET", "/v1/models", params=query, headers=bearer(c.wrong_key)
        )
        json_type = {"content-type": "application/json"}
        await self.call(
            "malformed json",
            "POST",
            "/v1/chat/completions",
            content=b'{"model": "gpt-c", "messages": [',
            headers=admin | json_type,
        )
        await self.call(
            "unknown model", "POST", "/v1/chat/completions", json=chat("nope"), headers=admin
        )
        await self.call("metrics as non-admin", "GET", "/metrics", headers=user)
        await self.call("metrics anonymous", "GET", "/metrics")
        await self.call("history", "GET", "/metrics/history", headers=admin)
        await self.call("dashboard", "GET", "/dashboard", headers=admin)
        await self.call("jwks", "GET", "/.well-known/jwks.json")

    async def tokens(self) -> None:
        """Mint, use, rotate, replay (theft), revoke, introspect; the client-side helper."""
        c, admin, user = self.c, self.admin, self.user

        async def mint(name: str, headers: dict[str, str]) -> dict[str, Any]:
            response = await self.call(
                name, "POST", "/auth/tokens", json={"name": "ci"}, headers=headers
            )
            pair: dict[str, Any] = response.json()
            return pair

        async def refresh(name: str, token: str) -> dict[str, Any]:
            form = {"grant_type": "refresh_token", "refresh_token": token}
            answer: dict[str, Any] = (
                await self.call(name, "POST", "/auth/token", data=form)
            ).json()
            return answer

        async def use(name: str, token: str) -> None:
            await self.call(
                name, "POST", "/v1/chat/completions", json=chat(), headers=bearer(token)
            )

        async def introspect(name: str, token: str, headers: dict[str, str]) -> None:
            await self.call(
                name, "POST", "/auth/introspect", data={"token": token}, headers=headers
            )

        root = await mint("mint admin", admin)
        alice = await mint("mint user", user)
        await use("token as bearer", alice["access_token"])
        rotated = await refresh("refresh", alice["refresh_token"])
        assert rotated["refresh_token"] != alice["refresh_token"]
        await refresh("refresh replayed", alice["refresh_token"])  # theft: family revoked
        await use("revoked family", rotated["access_token"])
        await use("refresh token as bearer", root["refresh_token"])
        await refresh("garbage refresh", "lpx_rt_" + c.garbage_bearer[-40:])
        await self.call("list", "GET", "/auth/tokens", headers=admin)
        await introspect("introspect", root["access_token"], admin)
        await introspect("introspect refresh", rotated["refresh_token"], admin)
        await introspect("introspect as non-admin", root["access_token"], user)
        form = {"token": root["refresh_token"]}
        await self.call("revoke", "POST", "/auth/revoke", data=form, headers=admin)
        await use("revoked token", root["access_token"])
        spare = await mint("mint spare", admin)
        await self.call("delete family", "DELETE", f"/auth/tokens/{spare['id']}", headers=admin)

        helper = await mint("mint for helper", user)
        token_url = f"{BASE}/auth/token"
        auth = ProxyTokenAuth(token_url, refresh_token=helper["refresh_token"])
        async with self.client(auth=auth) as with_helper:
            response = await with_helper.post("/v1/chat/completions", json=chat())
            self.status["client helper"] = response.status_code
        replayed = ProxyTokenAuth(token_url, refresh_token=helper["refresh_token"])
        async with self.client(auth=replayed) as with_replayed:
            try:
                await with_replayed.post("/v1/chat/completions", json=chat())
            except InvalidGrantError as exc:
                self.raised("client helper replayed", exc)

    async def login(self) -> None:
        """The OAuth login: bogus callbacks, and code exchanges the identity provider fails."""
        c = self.c

        async def start() -> str:
            response = await self.call("login", "GET", "/auth/login/corp", params={"next": "/x"})
            return parse_qs(urlsplit(response.headers["location"]).query)["state"][0]

        await start()
        params = {"state": "x", "code": "y"}
        await self.call("bogus callback", "GET", "/auth/callback/corp", params=params)
        forged = {"cookie": "llm_proxy_session=forged"}
        params = {"state": "x", "code": c.auth_code}
        await self.call(
            "forged cookie", "GET", "/auth/callback/corp", params=params, headers=forged
        )
        for name, answer in (
            ("idp invalid_grant", "invalid_grant"),
            ("idp bad id token", "tokens"),
            ("idp crash", "crash"),
        ):
            params = {"state": await start(), "code": c.auth_code}
            self.up.idp.login_answers.append(answer)
            await self.call(name, "GET", "/auth/callback/corp", params=params)
        await self.call("me", "GET", "/auth/me")
        await self.call("logout", "POST", "/auth/logout", headers={"origin": "http://testserver"})

    async def sdk(self) -> None:
        """The official SDK as the caller: what its exceptions say."""
        c = self.c
        for name, key, actions in (
            ("sdk wrong key", c.wrong_key, []),
            ("sdk provider 401", c.admin_key, [Action(status=401)]),
            ("sdk provider 500", c.admin_key, [Action(status=500)]),
        ):
            transport = httpx2.ASGITransport(app=self.host)
            http = httpx2.AsyncClient(transport=transport, event_hooks={"response": [self.record]})
            sdk = openai.AsyncOpenAI(
                base_url=f"{BASE}/v1", api_key=key, max_retries=0, http_client=http
            )
            async with http, sdk:
                self.up.fake.script(*actions)
                try:
                    await sdk.chat.completions.create(
                        model=GPT, messages=[{"role": "user", "content": "hi"}]
                    )
                except openai.APIError as exc:
                    self.raised(name, exc)
            assert self.up.fake.pending == 0


EXPECTED = {
    **dict.fromkeys(["healthz", "chat", "chat ?key=", "models ?key=", "messages", "stream"], 200),
    # A stream that breaks after it started ends with an error event, under status 200.
    **dict.fromkeys(["stream cut", "messages stream cut", "oauth provider"], 200),
    "oauth refused": 502,
    "provider 500": 500,
    "provider 401": 401,
    "provider 429": 429,
    "anthropic 401": 401,
    "anthropic 529": 529,
    "connection refused": 502,
    **dict.fromkeys(["wrong key", "wrong x-api-key", "garbage bearer", "expired token"], 401),
    "wrong key ?key=": 401,
    "malformed json": 400,
    "unknown model": 404,
    "metrics as non-admin": 403,
    "metrics anonymous": 401,
    **dict.fromkeys(["history", "dashboard", "jwks"], 200),
    **dict.fromkeys(["mint admin", "mint user", "mint spare", "mint for helper"], 201),
    "token as bearer": 200,
    "refresh": 200,
    "refresh replayed": 400,
    "revoked family": 401,
    "refresh token as bearer": 401,
    "garbage refresh": 400,
    "list": 200,
    "introspect": 200,
    "introspect refresh": 200,
    "introspect as non-admin": 403,
    "revoke": 200,
    "revoked token": 401,
    "delete family": 200,
    "client helper": 200,
    "client helper replayed": "InvalidGrantError",
    "login": 302,
    "bogus callback": 400,
    "forged cookie": 400,
    "idp invalid_grant": 400,
    "idp bad id token": 400,
    "idp crash": 502,
    "me": 401,
    "logout": 204,
    "sdk wrong key": "AuthenticationError",
    "sdk provider 401": "AuthenticationError",
    "sdk provider 500": "InternalServerError",
    "metrics": 200,
}


@pytest.mark.anyio
async def test_no_secret_in_logs_responses_exceptions_metrics_or_store(
    upstreams: Upstreams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up, c, seen = upstreams, upstreams.canaries, Seen()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    proxy = build_proxy(proxy_config(up, tmp_path), tracer_provider=tracer_provider)
    scenario = InProcess(Starlette(routes=[Mount("/llm", app=proxy)]), up, seen)
    with capture_logs(caplog, seen, not_the_proxy(BASE)) as captured:
        async with proxy.lifespan(), scenario.http:
            await scenario.proxied()
            await scenario.tokens()
            await scenario.login()
            await scenario.sdk()
            exposition = await scenario.call("metrics", "GET", "/metrics", headers=scenario.admin)
    seen.add("metrics exposition", exposition.text)
    finished = spans.get_finished_spans()
    for span in finished:
        seen.add(f"span {span.name}", span.to_json())
    # The attempts that carried the query secret upstream were traced, and it was masked.
    assert any("?key=REDACTED" in str((s.attributes or {}).get("url.full")) for s in finished)
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = tmp_path / f"store.db{suffix}"
        if path.exists():
            seen.add(f"store {path.name}", path.read_bytes().decode("latin-1"))

    assert scenario.status == EXPECTED
    # Each secret went where it belongs, so finding it nowhere else means something.
    sent = [r.headers for r in up.fake.requests]
    assert any(h.get("authorization") == f"Bearer {c.openai_key}" for h in sent)
    assert any(h.get("api-key") == c.provider_header for h in sent)
    assert any(h.get("x-api-key") == c.anthropic_key for h in sent)
    assert any(h.get("authorization") == f"Bearer {c.provider_access_token}" for h in sent)
    assert any(c.query_secret == unquote(r.query).removeprefix("key=") for r in up.fake.requests)
    assert set(up.idp.login_secrets) == {c.login_client_secret}
    assert set(up.idp.provider_secrets) == {c.provider_client_secret, c.broken_client_secret}
    assert sum("#" in label for label in c.values) >= 12  # every issued token is a canary
    # The access records too, every field of each (``render``).
    loggers = {"llm_proxy_mw", "llm_proxy_mw.access", "llm_proxy_mw.auth", "httpx", "httpx2"}
    assert loggers <= captured.loggers
    assert any("revoked the family as stolen" in e.text for e in seen.exposures)
    # Metric labels are bounded: configured names, "other" for any other model.
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition.text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    assert labels["model"] <= {GPT, CLAUDE, GPT_OAUTH, GPT_BROKEN, GPT_DOWN, "other", "none"}
    assert labels["provider"] <= {"openai", "anthropic", "azure", "broken", "down", "none"}
    assert_no_leaks(seen, c)


# ---- the example app under a uvicorn process, with uvicorn's own logging at DEBUG ----------


def example_config(up: Upstreams, store: Path) -> str:
    """The TOML a user writes: every secret a ``${VARIABLE}``."""
    fake, idp = up.fake_url, up.idp_url
    return f"""
[providers.openai]
kind = "openai"
base_url = "{fake}/v1"
api_key = "${{CANARY_OPENAI_KEY}}"
headers = {{ "api-key" = "${{CANARY_PROVIDER_HEADER}}" }}
models = ["{GPT}"]

[providers.openai.retry]
max_attempts = 1

[providers.anthropic]
kind = "anthropic"
base_url = "{fake}/v1"
api_key = "${{CANARY_ANTHROPIC_KEY}}"
models = ["{CLAUDE}"]

[providers.azure]
kind = "openai"
base_url = "{fake}/v1"
models = ["{GPT_OAUTH}"]

[providers.azure.oauth]
token_url = "{idp}/provider-token"
client_id = "azure-app"
client_secret = "${{CANARY_PROVIDER_CLIENT_SECRET}}"

[auth]
api_keys = [
  {{ name = "root", key = "${{CANARY_ADMIN_KEY}}", admin = true }},
  {{ name = "alice", key = "${{CANARY_USER_KEY}}" }},
]
session_secret = "${{CANARY_SESSION_SECRET}}"

[auth.tokens]
signing_key = "${{CANARY_SIGNING_JWK}}"

[auth.oauth.corp]
client_id = "corp-proxy"
client_secret = "${{CANARY_LOGIN_CLIENT_SECRET}}"
server_metadata_url = "{idp}/.well-known/openid-configuration"

[store]
url = "sqlite:///{store}/store.db"
"""


def uvicorn_debug_logging() -> dict[str, Any]:
    """uvicorn's default logging config (access log on stdout, the rest on stderr), with
    every other logger (the root) at DEBUG on stderr too."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["use_colors"] = False
    config["root"] = {"handlers": ["default"], "level": "DEBUG"}
    return config


@dataclass
class ExampleApp:
    url: str
    stdout: Path
    stderr: Path


@contextlib.contextmanager
def example_app_process(tmp: Path, config: str, canaries: Canaries) -> Iterator[ExampleApp]:
    """``uvicorn examples.app:app`` at DEBUG on a port of its choosing; its output in files."""
    (tmp / "llm-proxy.toml").write_text(config, encoding="utf-8")
    (tmp / "logging.json").write_text(json.dumps(uvicorn_debug_logging()), encoding="utf-8")
    foreign = ("OPENAI_", "ANTHROPIC_", "PROMETHEUS_MULTIPROC_DIR", "LLM_PROXY_CONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    env |= canaries.env() | {
        "LLM_PROXY_CONFIG": str(tmp / "llm-proxy.toml"),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "uvicorn", "examples.app:app", "--host", "127.0.0.1"]
    argv += ["--port", "0", "--http", "httptools", "--log-level", "debug"]
    argv += ["--log-config", str(tmp / "logging.json")]
    app = ExampleApp("", tmp / "stdout.log", tmp / "stderr.log")
    with app.stdout.open("wb") as out, app.stderr.open("wb") as err:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 20
        while not (started := re.search(r"running on (http://\S+)", app.stderr.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the example app did not start:\n{app.stderr.read_text()}")
            time.sleep(0.02)
        app.url = started.group(1)
        yield app
    finally:
        stop_process(process)


def websocket_handshake(url: str, path: str) -> bytes:
    """A websocket upgrade request without credentials; the proxy refuses it (uvicorn logs
    its URL)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        return sock.recv(65536)


def test_no_secret_in_the_output_of_the_example_app_under_uvicorn(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    up, c, seen = upstreams, upstreams.canaries, Seen()
    status: dict[str, int] = {}
    query = {"key": c.query_secret}
    admin, user = bearer(c.admin_key), {"x-api-key": c.user_key}

    def record(response: httpx.Response) -> None:
        response.read()
        where = f"response {response.request.method} {response.request.url}"
        seen.add(where, response_text(response, c))

    with example_app_process(tmp_path, example_config(up, tmp_path), c) as app:
        hooks = {"response": [record]}
        with httpx.Client(base_url=f"{app.url}/llm", timeout=TIMEOUT, event_hooks=hooks) as http:

            def call(name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
                response = http.request(method, path, **kwargs)
                status[name] = response.status_code
                return response

            call("models ?key=", "GET", "/v1/models", params=query, headers=admin)
            call(
                "chat ?key=",
                "POST",
                "/v1/chat/completions",
                params=query,
                json=chat(),
                headers=user,
            )
            call("messages", "POST", "/v1/messages", json=messages(), headers=user)
            call(
                "oauth provider", "POST", "/v1/chat/completions", json=chat(GPT_OAUTH), headers=user
            )
            up.fake.script(Action(cut_after=2))
            call(
                "stream cut", "POST", "/v1/chat/completions", json=chat(stream=True), headers=admin
            )
            up.fake.script(Action(status=500))
            call("provider 500", "POST", "/v1/chat/completions", json=chat(), headers=admin)
            assert up.fake.pending == 0
            call(
                "wrong key",
                "POST",
                "/v1/chat/completions",
                json=chat(),
                headers=bearer(c.wrong_key),
            )
            call("garbage bearer", "GET", "/v1/models", headers=bearer(c.garbage_bearer))
            call("expired token", "GET", "/v1/models", headers=bearer(c.expired_token))
            pair = call("mint", "POST", "/auth/tokens", json={"name": "ci"}, headers=admin).json()
            form = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
            call("refresh", "POST", "/auth/token", data=form)
            call("refresh replayed", "POST", "/auth/token", data=form)
            call("revoked family", "GET", "/v1/models", headers=bearer(pair["access_token"]))
            started = call("login", "GET", "/auth/login/corp")
            state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
            call("bogus callback", "GET", "/auth/callback/corp", params={"state": "x", "code": "y"})
            params = {"state": state, "code": c.auth_code}
            call("idp invalid_grant", "GET", "/auth/callback/corp", params=params)
            call("metrics as non-admin", "GET", "/metrics", headers=user)
            exposition = call("metrics", "GET", "/metrics", headers=admin).text
        refused = websocket_handshake(
            app.url, f"/llm/v1/realtime?key={quote(c.query_secret, safe='')}"
        )
    stdout, stderr = app.stdout.read_text(), app.stderr.read_text()
    seen.add("websocket response", refused.decode("latin-1"))
    seen.add("example app stdout", stdout)
    seen.add("example app stderr", stderr)
    seen.add("metrics exposition", exposition)
    seen.add("store", (tmp_path / "store.db").read_bytes().decode("latin-1"))

    assert status == {
        **dict.fromkeys(["models ?key=", "chat ?key=", "messages", "oauth provider"], 200),
        "stream cut": 200,
        "provider 500": 500,
        **dict.fromkeys(["wrong key", "garbage bearer", "expired token"], 401),
        "mint": 201,
        "refresh": 200,
        "refresh replayed": 400,
        "revoked family": 401,
        "login": 302,
        **dict.fromkeys(["bogus callback", "idp invalid_grant"], 400),
        "metrics as non-admin": 403,
        "metrics": 200,
    }
    assert refused.startswith(b"HTTP/1.1 401")
    assert set(up.idp.login_secrets) == {c.login_client_secret}
    sent = [r.headers for r in up.fake.requests]
    assert any(h.get("authorization") == f"Bearer {c.provider_access_token}" for h in sent)
    assert_no_leaks(seen, c)
    # The URLs were logged, their query secrets masked by the example app's filter.
    assert '"GET /llm/v1/models?key=*** HTTP/1.1" 200' in stdout
    assert '"POST /llm/v1/chat/completions?key=*** HTTP/1.1" 200' in stdout
    assert "/llm/auth/callback/corp?state=***&code=*** HTTP/1.1" in stdout
    assert '"WebSocket /llm/v1/realtime?key=***" 401' in stderr
    # The root logger was at DEBUG: the proxy's own records are in the output too.
    assert "minted token family" in stderr and "revoked the family as stolen" in stderr
    # And its access records, which quote no query.
    assert "POST /llm/v1/chat/completions 200 " in stderr
    assert "POST /llm/v1/chat/completions 401 authentication_error " in stderr


# ---- RedactQuerySecrets ---------------------------------------------------------------------

_ACCESS = '%s - "%s %s HTTP/%s" %d'


def access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's access log makes one."""
    args = ("127.0.0.1:50000", "GET", path, "1.1", 200)
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, _ACCESS, args, None)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/llm/v1/models?key=s3cr3t", "/llm/v1/models?key=***"),
        ("/v1/x?model=gpt&api_key=s3cr3t&stream=1", "/v1/x?model=gpt&api_key=***&stream=1"),
        ("/auth/callback/corp?state=abc&code=xyz", "/auth/callback/corp?state=***&code=***"),
        ("/x?API_KEY=s3cr3t&Key=two", "/x?API_KEY=***&Key=***"),
        ("/x?key=a%2Bb%2F&key=again", "/x?key=***&key=***"),
        ("/x?key=&token=t", "/x?key=***&token=***"),
        ("/x?access_token=a&refresh_token=b", "/x?access_token=***&refresh_token=***"),
        (
            "/x?client_secret=a&id_token=b&password=c",
            "/x?client_secret=***&id_token=***&password=***",
        ),
        ("/x?apikey=a&api-key=b", "/x?apikey=***&api-key=***"),
        ("/x?key=abc#top", "/x?key=***#top"),
        ("/x?monkey=1&keyboard=2&key&tokens=3", "/x?monkey=1&keyboard=2&key&tokens=3"),
        ("/key=not-a-query", "/key=not-a-query"),
        ("/plain/path", "/plain/path"),
    ],
)
def test_secret_query_values_are_masked(path: str, expected: str) -> None:
    record = access_record(path)
    assert RedactQuerySecrets().filter(record) is True  # never drops a record
    assert record.args == ("127.0.0.1:50000", "GET", expected, "1.1", 200)


def test_uvicorn_formats_the_redacted_access_record() -> None:
    record = access_record("/llm/v1/models?key=s3cr3t&x=1")
    RedactQuerySecrets().filter(record)
    formatter = uvicorn.logging.AccessFormatter(
        '%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False
    )
    line = formatter.format(record)
    assert line == '127.0.0.1:50000 - "GET /llm/v1/models?key=***&x=1 HTTP/1.1" 200 OK'


def test_messages_and_mapping_arguments_are_masked_too() -> None:
    redact = RedactQuerySecrets()
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "GET /a?token=t1 done", None, None)
    redact.filter(plain)
    assert plain.getMessage() == "GET /a?token=*** done"
    mapped = logging.LogRecord("x", logging.INFO, __file__, 1, "%(url)s %(n)d", (), None)
    mapped.args = {"url": "http://h/a?code=c1&x=2", "n": 3}
    redact.filter(mapped)
    assert mapped.getMessage() == "http://h/a?code=***&x=2 3"
    error = ValueError("GET http://h/a?api_key=k1 failed")
    raised = logging.LogRecord("x", logging.ERROR, __file__, 1, error, None, None)
    redact.filter(raised)
    assert raised.getMessage() == "GET http://h/a?api_key=*** failed"
    clean = ValueError("no URL here")
    kept = logging.LogRecord("x", logging.ERROR, __file__, 1, clean, None, None)
    redact.filter(kept)
    assert kept.msg is clean  # nothing to mask: the object itself is kept


def test_names_and_mask_can_be_chosen() -> None:
    redact = RedactQuerySecrets(["sig"], mask="[redacted]")
    assert redact.redact("/blob?sig=abc&key=kept") == "/blob?sig=[redacted]&key=kept"
    assert "key" in QUERY_SECRETS and "state" in QUERY_SECRETS
    with pytest.raises(ValueError, match="at least one"):
        RedactQuerySecrets([])


def test_the_example_app_installs_the_filter_once_on_uvicorns_url_loggers() -> None:
    example = importlib.import_module("examples.app")
    example.redact_logged_urls()  # loading the module again must not add a second one
    for name in ("uvicorn.access", "uvicorn.error"):
        installed = logging.getLogger(name).filters
        assert sum(isinstance(f, RedactQuerySecrets) for f in installed) == 1


# ---- configuration errors -------------------------------------------------------------------


def test_config_errors_and_reprs_show_no_secret() -> None:
    c, seen = Canaries(), Seen()
    invalid = {
        "providers": {
            "openai": {"kind": "openai", "api_key": c.openai_key, "base_url": "ftp://x"},
            "azure": {
                "kind": "openai",
                "headers": {"api-key": c.provider_header, "bad name": c.provider_header},
                "oauth": {
                    "token_url": "nope",
                    "client_id": "a",
                    "client_secret": c.broken_client_secret,
                },
            },
        },
        "auth": {
            "api_keys": [{"name": "root", "key": c.admin_key, "key_sha256": "0" * 64}],
            "session_secret": c.session_secret[:20],
            "oauth": {"corp": {"client_id": "x", "client_secret": c.login_client_secret}},
        },
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(invalid)
    seen.exception(refused.value)
    d = c.signing_key_d
    for unusable in (
        '{"kty": "OKP", "crv": "Ed25519", "d": "' + d,
        c.signing_jwk.replace("OKP", "EC"),
        c.signing_jwk.replace('"x":"', '"x":"A'),
    ):
        with pytest.raises(ConfigError) as refused:
            build_proxy(
                {
                    "providers": {"echo": {"kind": "echo"}},
                    "auth": {"tokens": {"signing_key": unusable}},
                    "store": {"url": "sqlite:///:memory:"},
                }
            )
        seen.exception(refused.value)
    config = parse_config(
        {
            "providers": {
                "openai": {
                    "kind": "openai",
                    "api_key": c.openai_key,
                    "headers": {"api-key": c.provider_header},
                },
                "azure": {
                    "kind": "openai",
                    "oauth": {
                        "token_url": "https://idp.example/token",
                        "client_id": "a",
                        "client_secret": c.provider_client_secret,
                    },
                },
            },
            "auth": {
                "api_keys": [{"name": "root", "key": c.admin_key}],
                "tokens": {"signing_key": c.signing_jwk},
                "session_secret": c.session_secret,
                "oauth": {
                    "corp": {
                        "client_id": "x",
                        "client_secret": c.login_client_secret,
                        "server_metadata_url": "https://idp.example/.well-known/openid-configuration",
                    }
                },
            },
            "store": {"url": "sqlite:///:memory:"},
        }
    )
    proxy = build_proxy(config)
    seen.add("reprs", f"{config!r}\n{config}\n{config.model_dump_json()}\n{proxy.providers!r}")
    sources = [p.credential_source for p in proxy.providers]
    seen.add("auth reprs", f"{sources!r} {proxy.auth_setup!r}")
    assert_no_leaks(seen, c)
