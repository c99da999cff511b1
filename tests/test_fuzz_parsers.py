"""Every parser the proxy runs on client input, fuzzed: whatever a client sends, it gets an
answer below 500, and nothing raises out of the app.

The proxy under test has every kind of credential configured: API keys, proxy-issued tokens,
an external JWT issuer whose JWKS a real server on loopback serves, and the OAuth login (for
its session cookie). Requests go through ``asgi_call``, as a server would deliver them, so
that bytes no client library would send still arrive. Hypothesis runs derandomized and
without its example database: the same examples on every run, no files left behind.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_proxy_mw import LLMProxy, build_proxy
from llm_proxy_mw._json_body import declares_json, takes_other_bodies
from tests.asgi_helpers import http_scope
from tests.fakes.transports import RecordingTransport
from tests.hardening_helpers import (
    Exchange,
    asgi_call,
    config,
    provider,
    serve_in_loop,
    server_url,
)

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ADMIN_KEY = "admin-key-fuzz-0123456789abcdef"
ISSUER = "https://idp.fuzz.example"
AUDIENCE = "llm-proxy-fuzz"
RSA = RSAKey.generate_key(2048, parameters={"kid": "fuzz-rsa"})
MODELS = ["gpt-fuzz", "claude-fuzz"]
SESSION_SECRET = "s" * 40


@dataclass
class Stack:
    proxy: LLMProxy
    transport: RecordingTransport
    #: An access token the proxy issued, whose header and signature the fuzz reuses.
    minted: str


def auth_config(jwks_url: str | None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "api_keys": [{"name": "root", "key": ADMIN_KEY, "admin": True}],
        "tokens": {},
        "oauth": {
            "github": {
                "client_id": "fuzz",
                "client_secret": "fuzz-secret",
                "allowed_users": ["login:ada"],
            }
        },
        "session_secret": SESSION_SECRET,
        "trust_proxy_headers": True,
    }
    if jwks_url is not None:
        auth["jwt_issuers"] = {
            "corp": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url}
        }
    return auth


async def serve_jwks(request: Request) -> JSONResponse:
    return JSONResponse(KeySet([RSA]).as_dict(private=False))


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    jwks = Starlette(routes=[Route("/jwks.json", serve_jwks)])
    async with serve_in_loop(jwks) as idp:
        transport = RecordingTransport()
        proxy = build_proxy(
            config(
                {
                    "openai": provider("http://openai.invalid/v1", models=[MODELS[0]]),
                    "anthropic": provider(
                        "http://anthropic.invalid/v1", kind="anthropic", models=[MODELS[1]]
                    ),
                },
                auth=auth_config(f"{server_url(idp)}/jwks.json"),
            ),
            transports={"openai": transport, "anthropic": transport},
        )
        async with proxy.lifespan():
            minted = await call(
                proxy,
                "POST",
                "/auth/tokens",
                json.dumps({"name": "fuzz"}).encode(),
                [(b"content-type", b"application/json"), bearer(ADMIN_KEY)],
            )
            assert minted.status == 201, minted.body
            token = json.loads(minted.body)["access_token"]
            yield Stack(proxy, transport, token)


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token.encode("latin-1"))


async def call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> Exchange:
    scope = http_scope(path, method=method, headers=(), query_string=query)
    scope["headers"] = list(headers or [])
    result = await asgi_call(app, scope, body)
    assert result.complete, (method, path, result)
    assert result.status < 500, (method, path, result.status, result.body[:300])
    return result


def assert_proxy_error_shape(path: str, result: Exchange) -> None:
    """An error the proxy itself answered is in the caller's format."""
    if result.status < 400 or any(name == b"x-llm-proxy-provider" for name, _ in result.headers):
        return
    if not result.body:  # HEAD
        return
    payload = json.loads(result.body)
    if path in ("/auth/token", "/auth/revoke", "/auth/introspect"):
        assert set(payload) == {"error", "error_description"}, payload
    elif path.startswith("/v1/messages"):
        assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
    else:
        assert {"message", "type", "code"} <= set(payload["error"]), payload


# -- strategies ----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(MODELS),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


JOSE_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "PS256", "HS256", "none"]) | JSON_VALUES,
        "kid": st.just("fuzz-rsa") | JSON_VALUES,
        "typ": st.sampled_from(["at+jwt", "JWT"]) | JSON_VALUES,
        "crit": JSON_VALUES,
        "jku": st.text(max_size=30),
        "b64": JSON_VALUES,
    },
)
NOW = int(time.time())
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.sampled_from([ISSUER, "llm_proxy_mw"]) | JSON_VALUES,
        "aud": st.sampled_from([AUDIENCE, "llm_proxy_mw", [AUDIENCE]]) | JSON_VALUES,
        "sub": st.sampled_from(["user-1", ""]) | JSON_VALUES,
        "exp": st.sampled_from([NOW + 300, NOW - 300, 10**20, 1e308]) | JSON_VALUES,
        "nbf": st.sampled_from([NOW, NOW + 3600]) | JSON_VALUES,
        "iat": st.sampled_from([NOW - 10]) | JSON_VALUES,
        "scope": JSON_VALUES,
        "scp": JSON_VALUES,
        "email": JSON_VALUES,
        "fam": JSON_VALUES,
        "jti": JSON_VALUES,
    },
)
SEGMENTS = (
    JOSE_HEADERS.map(dumps).map(b64)
    | CLAIMS.map(dumps).map(b64)
    | JSON_VALUES.map(dumps).map(b64)
    | st.binary(max_size=48).map(b64)
    | st.text(alphabet="ABCxyz019-_=+/.%", max_size=24)
)


def rs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token really signed with the issuer's key, whatever its header and claims say."""
    signing_input = f"{b64(dumps(header))}.{b64(dumps(claims))}"
    key = RSA.private_key
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    return f"{signing_input}.{b64(signature)}"


TOKENS = (
    st.tuples(SEGMENTS, SEGMENTS, SEGMENTS).map(".".join)
    | st.builds(rs256, JOSE_HEADERS, CLAIMS)
    | st.text(max_size=40)
)
#: A valid token's header and claims, of which each signed token overrides a few: so that
#: it gets past the signature, to the claims, and some are accepted.
VALID_HEADER = {"alg": "RS256", "kid": "fuzz-rsa"}
VALID_CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": NOW + 300, "iat": NOW}
HEADER_OVERRIDES = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "b64"]), JSON_VALUES, max_size=1
)
CLAIM_OVERRIDES = st.dictionaries(
    st.sampled_from([*VALID_CLAIMS, "nbf", "scope", "scp", "email"]),
    JSON_VALUES | st.sampled_from([NOW, -1, 2**63, 1e308, [AUDIENCE, 7], ""]),
    max_size=2,
)


@FUZZ
@given(
    token=TOKENS,
    tamper=st.none() | SEGMENTS,
    header=st.sampled_from(["authorization", "x-api-key"]),
)
async def test_jwt_shaped_credentials_are_401_or_accepted_never_500(
    stack: Stack, token: str, tamper: str | None, header: str
) -> None:
    if tamper is not None:
        # The proxy's own token (its kid, alg and typ, a real signature) around other claims.
        head, _, signature = stack.minted.split(".")
        token = f"{head}.{tamper}.{signature}"
    value = token.encode("utf-8", "surrogatepass")
    value = value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
    credential = (
        (b"authorization", b"Bearer " + value)
        if header == "authorization"
        else (b"x-api-key", value)
    )
    result = await call(
        stack.proxy,
        "POST",
        "/v1/chat/completions",
        dumps({"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}]}),
        [(b"content-type", b"application/json"), credential],
    )
    assert result.status in (200, 401), (result.status, result.body)


@FUZZ
@given(header=HEADER_OVERRIDES, claims=CLAIM_OVERRIDES)
async def test_signed_tokens_with_odd_headers_and_claims_are_401_or_accepted(
    stack: Stack, header: dict[str, Any], claims: dict[str, Any]
) -> None:
    token = rs256(VALID_HEADER | header, VALID_CLAIMS | claims)
    result = await call(
        stack.proxy,
        "POST",
        "/v1/chat/completions",
        dumps({"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}]}),
        [(b"content-type", b"application/json"), bearer(token)],
    )
    assert result.status in (200, 401), (result.status, result.body)


@pytest.mark.parametrize(
    "external_issuer",
    [False, True],
    ids=["proxy tokens", "proxy tokens and an external issuer"],
)
@pytest.mark.parametrize("segment", ["header", "payload"])
async def test_a_jwt_nested_5000_deep_is_401(external_issuer: bool, segment: str) -> None:
    # Never fetched: the token is refused before any key is looked up.
    jwks_url = "http://127.0.0.1:9/jwks.json" if external_issuer else None
    proxy = build_proxy(
        config(
            {"openai": provider("http://openai.invalid/v1")},
            auth=auth_config(jwks_url) if external_issuer else {"tokens": {}},
        ),
        transports={"openai": RecordingTransport()},
    )
    deep = b64(b"[" * 5000)
    claims = b64(dumps({"iss": ISSUER}))
    token = f"{deep}.{claims}.c2ln" if segment == "header" else f"{b64(b'{}')}.{deep}.c2ln"
    async with proxy.lifespan():
        result = await call(
            proxy,
            "POST",
            "/v1/chat/completions",
            b"{}",
            [(b"content-type", b"application/json"), bearer(token)],
        )
    assert result.status == 401


# -- JSON bodies ---------------------------------------------------------------------------------

JSON_PATHS = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/batches",
    "/v1/files",
    "/v1/audio/transcriptions",
    "/v1/something/else",
]
CONTENT_TYPES = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/vnd.x+json",
        b"text/plain",
        b"multipart/form-data; boundary=x",
        b"application/x-www-form-urlencoded",
        b"application/x-ndjson",
        b"",
    ]
) | st.binary(max_size=30)
#: Message content: a string, parts (``{"type": "text", "text": ...}``), or anything.
CONTENT = JSON_VALUES | st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "input_text"]) | JSON_VALUES},
        optional={"text": JSON_VALUES},
    ),
    max_size=3,
)
CHAT_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(MODELS) | JSON_VALUES,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system"]) | JSON_VALUES, "content": CONTENT}
            ),
            max_size=3,
        )
        | JSON_VALUES,
        "stream": st.booleans() | JSON_VALUES,
        "max_tokens": st.integers() | JSON_VALUES,
        "input": JSON_VALUES,
        "prompt": JSON_VALUES,
        "system": CONTENT,
        "max_completion_tokens": st.integers() | JSON_VALUES,
        "stream_options": JSON_VALUES,
    },
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that are JSON, almost JSON, or not JSON at all."""
    kinds = ["chat", "any", "mutated", "duplicate", "huge number", "deep", "bytes"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    if kind == "deep":
        depth = draw(st.sampled_from([900, 5000, 100_000]))
        return b'{"model": "gpt-fuzz", "x": ' + b"[" * depth + b"]" * depth + b"}"
    value = draw(CHAT_LIKE) if kind != "any" else draw(JSON_VALUES)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    if kind == "mutated" and text:
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from(["", '"', "{", "]", ",", "\\u", "\x00", "\ud800"]))
            + text[at + draw(st.integers(0, 3)) :]
        )
    elif kind == "duplicate" and text.startswith("{") and len(text) > 2:
        text = '{"model": "gpt-fuzz", ' + text[1:]
    elif kind == "huge number" and text.startswith("{") and len(text) > 2:
        text = '{"n": ' + "7" * draw(st.integers(4290, 4400)) + ", " + text[1:]
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(
    path=st.sampled_from(JSON_PATHS),
    method=st.sampled_from(["POST", "POST", "POST", "PUT", "PATCH", "GET", "DELETE"]),
    content_type=st.none() | CONTENT_TYPES,
    body=json_bodies(),
)
async def test_json_bodies_never_500_and_only_json_is_routed(
    stack: Stack, path: str, method: str, content_type: bytes | None, body: bytes
) -> None:
    headers = [(b"authorization", b"Bearer " + ADMIN_KEY.encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    before = len(stack.transport.sent)
    result = await call(stack.proxy, method, path, body, headers)
    assert_proxy_error_shape(path, result)
    forwarded = len(stack.transport.sent) > before
    if forwarded and body and method not in ("GET", "DELETE"):
        scope = {"headers": headers}
        assert declares_json(scope) or takes_other_bodies(path), (content_type, path)


ROUTES = {
    "/v1/chat/completions": MODELS[0],
    "/v1/completions": MODELS[0],
    "/v1/embeddings": MODELS[0],
    "/v1/responses": MODELS[0],
    "/v1/messages": MODELS[1],
    "/v1/messages/count_tokens": MODELS[1],
}
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": CONTENT}),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(path=st.sampled_from(list(ROUTES)), fields=CHAT_LIKE, messages=MESSAGES)
async def test_bodies_that_reach_a_provider_never_500(
    stack: Stack, path: str, fields: dict[str, Any], messages: list[Any]
) -> None:
    # Routed, so that the provider's side (here the echo provider) parses them too.
    body = dumps({**fields, "model": ROUTES[path], "messages": messages})
    headers = [(b"content-type", b"application/json"), bearer(ADMIN_KEY)]
    result = await call(stack.proxy, "POST", path, body, headers)
    assert_proxy_error_shape(path, result)


# -- form bodies ---------------------------------------------------------------------------------

FORM_NAMES = st.sampled_from(["grant_type", "refresh_token", "token", "token_type_hint"]) | st.text(
    max_size=10
)
FORM_VALUES = st.sampled_from(["refresh_token", "lpx_rt_x", ""]) | st.text(max_size=30)


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(FORM_NAMES, FORM_VALUES), max_size=20))
        return urlencode(pairs).encode()
    return draw(
        st.binary(max_size=120) | st.text(alphabet="=&%+;abc0", max_size=60).map(str.encode)
    )


@FUZZ
@given(
    path=st.sampled_from(["/auth/token", "/auth/revoke", "/auth/introspect", "/auth/tokens"]),
    content_type=st.none()
    | st.sampled_from([b"application/x-www-form-urlencoded", b"application/json"])
    | CONTENT_TYPES,
    body=form_bodies() | json_bodies(),
    authenticated=st.booleans(),
)
async def test_form_and_token_bodies_never_500(
    stack: Stack, path: str, content_type: bytes | None, body: bytes, authenticated: bool
) -> None:
    headers = [bearer(ADMIN_KEY)] if authenticated else []
    if content_type is not None:
        headers.append((b"content-type", content_type))
    result = await call(stack.proxy, "POST", path, body, headers)
    assert_proxy_error_shape(path, result)


# -- headers and query strings -------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        b"content-length",
        b"content-type",
        b"authorization",
        b"x-api-key",
        b"x-request-id",
        b"anthropic-version",
        b"anthropic-beta",
        b"cookie",
        b"origin",
        b"referer",
        b"host",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
        b"forwarded",
        b"connection",
        b"transfer-encoding",
        b"expect",
        b"accept",
        b"x-should-retry",
    ]
) | st.binary(min_size=1, max_size=12).map(bytes.lower)
# What a server hands on: any byte but CR, LF and NUL, which its own parser refuses.
HEADER_VALUES = st.binary(max_size=80).map(
    lambda v: v.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
) | st.sampled_from(
    [
        b"llm_proxy_session=" + b"A" * 40 + b".sig",
        b"Bearer " + ADMIN_KEY.encode(),
        b"http://test",
        b"-1",
        b"99999999999999999999999",
        b"application/json",
    ]
)
PATHS = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/models",
    "/v1/files/file-1",
    "/healthz",
    "/metrics",
    "/metrics/history",
    "/dashboard",
    "/auth/me",
    "/auth/logout",
    "/auth/callback/github",
    "/auth/token",
    "/auth/tokens",
    "/auth/tokens/tf_x",
    "/.well-known/jwks.json",
    "/nope",
]


@FUZZ
@given(
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT"]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8),
    query=st.binary(max_size=40) | st.sampled_from([b"range=1h", b"state=x&code=y", b"range=-1d"]),
    with_body=st.booleans(),
)
async def test_any_headers_and_query_never_500(
    stack: Stack,
    path: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    query: bytes,
    with_body: bool,
) -> None:
    body = dumps({"model": MODELS[0], "messages": []}) if with_body else b""
    result = await call(stack.proxy, method, path, body, headers, query)
    if method != "HEAD":
        assert_proxy_error_shape(path, result)
