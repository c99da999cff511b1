"""External identity providers' access tokens: what is accepted, every way a token is
refused (each attack a test), the JWKS cache and its rate-limited refetch, and the whole
proxy against a real JWKS served by uvicorn."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_proxy_mw import build_proxy
from llm_proxy_mw.auth._external_jwt import ExternalJwtAuthenticator
from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.config import JwtIssuerConfig
from tests.fakes.servers import UvicornServer

ISSUER = "https://idp.example"
AUDIENCE = "llm-proxy"
JWKS_URL = "https://idp.example/.well-known/jwks.json"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ROTATED = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
NOW = 1_900_000_000.0


class Clocks:
    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def jwks(*keys: Any) -> dict[str, Any]:
    return KeySet(list(keys)).as_dict(private=False)


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "email": "ada@example.com",
        "exp": int(NOW) + 300,
        "iat": int(NOW) - 10,
        "scope": "llm:chat llm:embed",
    }
    return {k: v for k, v in (base | overrides).items() if v is not None}


def token(
    key: Any = RSA, alg: str = "RS256", header: dict[str, Any] | None = None, **kw: Any
) -> str:
    return jwt.encode(
        {"alg": alg, "kid": key.kid} | (header or {}), claims(**kw), key, algorithms=[alg]
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], body: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built by hand, for headers and algorithms a JOSE library refuses to emit."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def rsa_sign(data: bytes) -> bytes:
    return RSA.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]


class Idp:
    """A JWKS endpoint on respx, counting fetches."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.status = 200
        self.router = respx.MockRouter(assert_all_called=False)
        self.route = self.router.get(JWKS_URL).mock(side_effect=self._serve)

    def _serve(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.status, json=jwks(*self.keys))

    @property
    def fetches(self) -> int:
        return self.route.call_count


def authenticator(idp: Idp, clocks: Clocks, **issuer: Any) -> ExternalJwtAuthenticator:
    config = JwtIssuerConfig(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=JWKS_URL,
        **({"name_claim": "email", "admin_subjects": ["root"]} | issuer),
    )
    return ExternalJwtAuthenticator(
        {"corp": config},
        transport=httpx.MockTransport(idp.router.async_handler),
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )


SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "headers": []}


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def idp() -> Idp:
    return Idp(RSA, EC)


@pytest.mark.anyio
async def test_a_valid_token_is_accepted_and_cached(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks)
    principal = await auth.authenticate(SCOPE, token())
    assert principal is not None
    assert (principal.name, principal.kind, principal.subject) == (
        "ada@example.com",
        "jwt",
        "corp:user-1",
    )
    assert principal.admin is False
    assert principal.scopes == {"llm:chat", "llm:embed"}
    assert await auth.authenticate(SCOPE, token(EC, "ES256")) is not None
    assert await auth.authenticate(SCOPE, token()) == principal
    assert idp.fetches == 1
    await auth.stop()


@pytest.mark.anyio
async def test_the_name_falls_back_to_the_subject(idp: Idp, clocks: Clocks) -> None:
    principal = await authenticator(idp, clocks).authenticate(SCOPE, token(email=None))
    assert principal is not None and principal.name == "user-1"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "iss",
    ["https://idp.example/", "https://idp.example.evil", "https://IDP.example", "idp.example"],
)
async def test_wrong_or_look_alike_issuer_is_refused(idp: Idp, clocks: Clocks, iss: str) -> None:
    assert await authenticator(idp, clocks).authenticate(SCOPE, token(iss=iss)) is None
    assert idp.fetches == 0  # not a token of ours: no key is even looked up


@pytest.mark.anyio
async def test_audience_must_be_ours(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks)
    assert await auth.authenticate(SCOPE, token(aud="other-api")) is None
    assert await auth.authenticate(SCOPE, token(aud=None)) is None
    assert await auth.authenticate(SCOPE, token(aud=["other-api", AUDIENCE])) is not None


@pytest.mark.anyio
async def test_expiry_is_required_and_enforced_with_a_small_leeway(
    idp: Idp, clocks: Clocks
) -> None:
    auth = authenticator(idp, clocks)
    assert await auth.authenticate(SCOPE, token(exp=None)) is None
    assert await auth.authenticate(SCOPE, token(exp=int(NOW) - 60)) is None
    assert await auth.authenticate(SCOPE, token(exp=int(NOW) - 10)) is not None  # leeway
    assert await auth.authenticate(SCOPE, token(nbf=int(NOW) + 120)) is None
    assert await auth.authenticate(SCOPE, token(iat=int(NOW) + 120)) is None


@pytest.mark.anyio
async def test_a_cached_token_still_expires(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks)
    valid = token()
    assert await auth.authenticate(SCOPE, valid) is not None
    clocks.advance(301)  # past exp: verified again, within the leeway
    assert await auth.authenticate(SCOPE, valid) is not None
    clocks.advance(30)
    assert await auth.authenticate(SCOPE, valid) is None


@pytest.mark.anyio
async def test_algorithm_comes_from_the_allow_list(idp: Idp, clocks: Clocks) -> None:
    only_ec = authenticator(idp, clocks, algorithms=["ES256"])
    assert await only_ec.authenticate(SCOPE, token()) is None
    assert await only_ec.authenticate(SCOPE, token(EC, "ES256")) is not None
    auth = authenticator(idp, clocks)
    assert await auth.authenticate(SCOPE, token(alg="PS256")) is None  # PS256 is not allowed


@pytest.mark.anyio
async def test_alg_none_is_refused(idp: Idp, clocks: Clocks) -> None:
    unsigned = raw_token({"alg": "none", "kid": "rsa-1"}, claims(), lambda _: b"")
    assert await authenticator(idp, clocks).authenticate(SCOPE, unsigned) is None


@pytest.mark.anyio
async def test_hs256_signed_with_the_public_key_is_refused(idp: Idp, clocks: Clocks) -> None:
    public_pem = RSA.public_key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = raw_token(
        {"alg": "HS256", "kid": "rsa-1"},
        claims(sub="root"),
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    auth = authenticator(idp, clocks, algorithms=["RS256", "ES256", "PS256", "EdDSA"])
    assert await auth.authenticate(SCOPE, forged) is None


@pytest.mark.anyio
async def test_unknown_crit_header_is_refused(idp: Idp, clocks: Clocks) -> None:
    header = {"alg": "RS256", "kid": "rsa-1", "crit": ["x-policy"], "x-policy": 1}
    assert (
        await authenticator(idp, clocks).authenticate(SCOPE, raw_token(header, claims(), rsa_sign))
        is None
    )
    plain = raw_token({"alg": "RS256", "kid": "rsa-1"}, claims(), rsa_sign)
    assert await authenticator(idp, clocks).authenticate(SCOPE, plain) is not None


@pytest.mark.anyio
async def test_a_bad_signature_is_refused(idp: Idp, clocks: Clocks) -> None:
    head, body, _ = token().split(".")
    _, _, other = token(sub="someone-else").split(".")
    assert await authenticator(idp, clocks).authenticate(SCOPE, f"{head}.{body}.{other}") is None
    signed_by_stranger = token(ROTATED, header={"kid": "rsa-1"})
    assert await authenticator(idp, clocks).authenticate(SCOPE, signed_by_stranger) is None


@pytest.mark.anyio
@pytest.mark.parametrize("size", [8193, 1024 * 1024])
async def test_oversized_tokens_are_refused_before_decoding(
    idp: Idp, clocks: Clocks, size: int
) -> None:
    huge = token(padding="x" * size)
    assert await authenticator(idp, clocks).authenticate(SCOPE, huge) is None
    assert idp.fetches == 0


@pytest.mark.anyio
@pytest.mark.parametrize("junk", ["a.b.c", "..", "x" * 100, "e30.e30.", "bm90IGpzb24.e30.x"])
async def test_junk_is_refused(idp: Idp, clocks: Clocks, junk: str) -> None:
    assert await authenticator(idp, clocks).authenticate(SCOPE, junk) is None


@pytest.mark.anyio
async def test_unknown_kid_refetches_once_rate_limited(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks)
    assert await auth.authenticate(SCOPE, token()) is not None
    assert idp.fetches == 1
    idp.keys.append(ROTATED)  # the provider rotates in a new key
    assert await auth.authenticate(SCOPE, token(ROTATED)) is None
    assert idp.fetches == 1  # the JWKS was fetched a moment ago: not again yet
    clocks.advance(31)
    assert await auth.authenticate(SCOPE, token(ROTATED)) is not None
    assert idp.fetches == 2
    for kid in ("nope", "../../etc/passwd", "' OR 1=1 --", "rsa-3"):
        assert await auth.authenticate(SCOPE, token(ROTATED, header={"kid": kid})) is None
    assert idp.fetches == 2  # refetched at most once per 30 s
    clocks.advance(31)
    assert await auth.authenticate(SCOPE, token(ROTATED, header={"kid": "rsa-3"})) is None
    assert idp.fetches == 3


@pytest.mark.anyio
async def test_keys_are_refetched_when_old(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks)
    assert await auth.authenticate(SCOPE, token()) is not None
    idp.keys = [ROTATED]  # the old key was withdrawn
    clocks.advance(3601)
    assert await auth.authenticate(SCOPE, token(exp=int(clocks.wall) + 60)) is None
    assert idp.fetches == 2


@pytest.mark.anyio
async def test_jwks_failures_are_survived(
    idp: Idp, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    auth = authenticator(idp, clocks)
    idp.status = 500
    assert await auth.authenticate(SCOPE, token()) is None
    assert await auth.authenticate(SCOPE, token(sub="other")) is None
    assert idp.fetches == 1
    assert "jwks of issuer corp not loaded" in caplog.text
    idp.status = 200
    clocks.advance(31)
    assert await auth.authenticate(SCOPE, token()) is not None


@pytest.mark.anyio
async def test_jwks_timeouts_are_bounded_and_survived(clocks: Clocks) -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("stalled", request=request)

    config = JwtIssuerConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=JWKS_URL)
    auth = ExternalJwtAuthenticator(
        {"corp": config}, transport=httpx.MockTransport(stall), timeout=0.5
    )
    assert await auth.authenticate(SCOPE, token()) is None
    await auth.stop()


@pytest.mark.anyio
async def test_admin_subjects(idp: Idp, clocks: Clocks) -> None:
    principal = await authenticator(idp, clocks).authenticate(SCOPE, token(sub="root"))
    assert principal is not None and principal.admin is True


@pytest.mark.anyio
async def test_required_scopes(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks, required_scopes=["llm:chat"])
    assert await auth.authenticate(SCOPE, token()) is not None
    assert await auth.authenticate(SCOPE, token(scope="llm:embed")) is None
    assert await auth.authenticate(SCOPE, token(scope=None)) is None
    assert await auth.authenticate(SCOPE, token(scope=None, scp=["llm:chat"])) is not None
    assert await auth.authenticate(SCOPE, token(scope=None, scp="llm:chat other")) is not None


@pytest.mark.anyio
async def test_no_token_in_logs(idp: Idp, clocks: Clocks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = authenticator(idp, clocks)
    tokens = [token(), token(aud="x"), token(header={"kid": "nope"})]
    for value in tokens:
        await auth.authenticate(SCOPE, value)
    for value in tokens:
        assert value not in caplog.text and value.split(".")[2] not in caplog.text


# ---- the whole proxy, against a real JWKS endpoint ----------------------------------------


def test_proxy_accepts_external_tokens_from_a_real_jwks(tmp_path: Path) -> None:
    async def serve_jwks(request: Any) -> JSONResponse:
        return JSONResponse(jwks(RSA))

    jwks_app = Starlette(routes=[Route("/jwks.json", serve_jwks)])
    with UvicornServer(jwks_app) as server:
        issuer = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": f"{server.url}/jwks.json"}
        proxy = build_proxy(
            {
                "providers": {"echo": {"kind": "echo"}},
                "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
                "auth": {"jwt_issuers": {"corp": issuer}},
            }
        )
        now = int(time.time())
        valid = token(exp=now + 300, iat=now)
        expired = token(exp=now - 300, iat=now - 600)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        with (
            UvicornServer(proxy) as served,
            httpx.Client(base_url=served.url, timeout=10) as client,
        ):
            ok = client.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {valid}"}
            )
            assert ok.status_code == 200, ok.text
            refused = client.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {expired}"}
            )
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert expired not in refused.text


@pytest.mark.anyio
async def test_odd_jwks_entries_are_skipped(clocks: Clocks) -> None:
    public = RSA.as_dict(private=False)
    odd = [
        {**ROTATED.as_dict(private=True)},  # private material published by mistake
        {**EC.as_dict(private=False), "use": "enc"},
        {"kty": "XYZ", "kid": "weird"},
        "not a key",
        public,
    ]
    idp = Idp()
    idp.router.get(JWKS_URL).mock(return_value=httpx.Response(200, json={"keys": odd}))
    auth = authenticator(idp, clocks)
    assert await auth.authenticate(SCOPE, token()) is not None
    assert await auth.authenticate(SCOPE, token(ROTATED, header={"kid": "rsa-2"})) is None
    assert await auth.authenticate(SCOPE, token(EC, "ES256")) is None


@pytest.mark.anyio
async def test_a_token_without_kid_needs_a_single_key(clocks: Clocks) -> None:
    unnamed = RSA.as_dict(private=False)
    del unnamed["kid"]
    idp = Idp()
    idp.router.get(JWKS_URL).mock(return_value=httpx.Response(200, json={"keys": [unnamed]}))
    no_kid = jwt.encode({"alg": "RS256"}, claims(), RSA)
    assert await authenticator(idp, clocks).authenticate(SCOPE, no_kid) is not None
    two = Idp(RSA, ROTATED)
    assert await authenticator(two, clocks).authenticate(SCOPE, no_kid) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, json=["not", "a", "set"]),
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, content=b'{"keys": [' + b" " * (1024 * 1024) + b"]}"),
        httpx.Response(302, headers={"location": "https://elsewhere.example/jwks"}),
        httpx.Response(200, content=b"[" * 100_000),  # RecursionError in json.loads
    ],
)
async def test_a_bad_jwks_loads_no_keys(clocks: Clocks, response: httpx.Response) -> None:
    idp = Idp()
    idp.router.get(JWKS_URL).mock(return_value=response)
    assert await authenticator(idp, clocks).authenticate(SCOPE, token()) is None


@pytest.mark.anyio
async def test_the_verified_cache_is_bounded(idp: Idp, clocks: Clocks) -> None:
    auth = authenticator(idp, clocks)
    auth.cache_size = 3
    tokens = [token(sub=f"user-{i}") for i in range(5)]
    for value in tokens:
        assert await auth.authenticate(SCOPE, value) is not None
    assert len(auth._verified) == 3


# ---- only access tokens: the token type and ID-token claims ---------------------------------


def typed(typ: Any, **kw: Any) -> str:
    """A valid token of ours whose header carries ``typ`` (any JSON value)."""
    return raw_token({"alg": "RS256", "kid": "rsa-1", "typ": typ}, claims(**kw), rsa_sign)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "typ",
    [
        "JWT",
        "jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+JWT",
        "application/jwt",
    ],
)
async def test_access_token_types_are_accepted(idp: Idp, clocks: Clocks, typ: str) -> None:
    assert await authenticator(idp, clocks).authenticate(SCOPE, typed(typ)) is not None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "typ",
    [
        "logout+jwt",  # an OIDC back-channel logout token: our audience, signed by the issuer
        "secevent+jwt",
        "dpop+jwt",
        "id_token+jwt",
        "JOSE",
        "at+jwt ",
        "application/application/at+jwt",
        "",
        None,
        1,
        ["at+jwt"],
    ],
)
async def test_other_token_types_are_refused(idp: Idp, clocks: Clocks, typ: Any) -> None:
    assert await authenticator(idp, clocks).authenticate(SCOPE, typed(typ)) is None
    opted_in = authenticator(idp, clocks, accept_id_tokens=True)
    assert await opted_in.authenticate(SCOPE, typed(typ)) is None
    assert idp.fetches == 0  # refused before any key is looked up


ID_TOKEN_CLAIMS = [
    {"nonce": "n-0S6_WzA2Mj", "at_hash": "77QmUPtjPfzWtF2AnpK9RQ", "auth_time": int(NOW) - 60},
    {"nonce": "n-0S6_WzA2Mj"},
    {"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"},
    {"c_hash": "LDktKdoQak3Pk0cnXxCltA"},
]


@pytest.mark.anyio
@pytest.mark.parametrize("id_claims", ID_TOKEN_CLAIMS)
async def test_an_id_token_for_our_audience_is_refused_unless_configured(
    idp: Idp, clocks: Clocks, id_claims: dict[str, Any]
) -> None:
    # An ID token of a client whose id is our audience: typ JWT, signed, aud matching.
    id_token = typed("JWT", scope=None, **id_claims)
    assert await authenticator(idp, clocks).authenticate(SCOPE, id_token) is None
    opted_in = authenticator(idp, clocks, accept_id_tokens=True)
    principal = await opted_in.authenticate(SCOPE, id_token)
    assert principal is not None and principal.subject == "corp:user-1"


@pytest.mark.anyio
async def test_an_expiry_past_the_float_range_is_accepted_and_cached(
    idp: Idp, clocks: Clocks
) -> None:
    auth = authenticator(idp, clocks)
    far = token(exp=10**400)
    assert await auth.authenticate(SCOPE, far) is not None
    assert await auth.authenticate(SCOPE, far) is not None
    assert idp.fetches == 1


# ---- hostile token segments -----------------------------------------------------------------

NESTED = "[" * 5000


def proxy_with_issuer(tmp_path: Path) -> Any:
    issuer = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": JWKS_URL}
    return build_proxy(
        {
            "providers": {"echo": {"kind": "echo"}},
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "auth": {"jwt_issuers": {"corp": issuer}},
        }
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (NESTED, "{}"),
        ('{"alg": "RS256", "kid": ' + NESTED, json.dumps(claims())),
        ('{"alg": "RS256", "kid": "rsa-1"}', NESTED),
        ('{"alg": "RS256", "kid": "rsa-1"}', '{"iss": "' + ISSUER + '", "x": ' + NESTED),
    ],
    ids=["header", "header-value", "payload", "payload-value"],
)
async def test_a_deeply_nested_token_is_a_401_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, header: str, payload: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_proxy_mw")
    hostile = f"{b64(header.encode())}.{b64(payload.encode())}.{b64(b'sig')}"
    proxy = proxy_with_issuer(tmp_path)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://t") as client,
    ):
        caplog.clear()
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {hostile}"}
        )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")
    records = [r for r in caplog.records if r.name.startswith("llm_proxy_mw")]
    # The failure line and the access record, once each.
    names = sorted(r.name for r in records)
    assert names == ["llm_proxy_mw", "llm_proxy_mw.access"], [r.getMessage() for r in records]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)


SEGMENT = st.text(
    alphabet=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.[{"
    ),
    max_size=200,
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def valid_or_any(*valid: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(valid) | JSON_VALUE


#: Tokens signed by the issuer's key, so that the claims checks see hostile values too.
SIGNED_HEADER = st.fixed_dictionaries(
    {"alg": st.just("RS256"), "kid": st.just("rsa-1")},
    optional={"typ": valid_or_any("JWT", "at+jwt"), "crit": JSON_VALUE},
)
SIGNED_CLAIMS = st.fixed_dictionaries(
    {
        "iss": st.just(ISSUER),
        "aud": valid_or_any(AUDIENCE, [AUDIENCE, "other"]),
        "exp": valid_or_any(int(NOW) + 60, 10**400, float(NOW) + 0.5),
        "sub": valid_or_any("user-1", "root"),
    },
    optional={
        name: valid_or_any(int(NOW) - 5, "llm:chat", ["llm:chat"])
        for name in ("nbf", "iat", "scope", "scp", "email", "nonce")
    },
)


#: JSON text, valid or not, shallow or nested past Python's recursion limit.
JSON_TEXT = (
    JSON_VALUE.map(json.dumps)
    | st.integers(1, 20_000).map(lambda depth: "[" * depth)
    | st.integers(1, 20_000).map(lambda depth: '{"iss": "' + ISSUER + '", "x": ' + "[" * depth)
    | st.text(max_size=50)
)


def encoded(text: str) -> str:
    return b64(text.encode())


HOSTILE_TOKENS = (
    st.tuples(SEGMENT, SEGMENT, SEGMENT).map(".".join)
    | st.tuples(JSON_TEXT.map(encoded), JSON_TEXT.map(encoded), SEGMENT).map(".".join)
    | st.tuples(SIGNED_HEADER, SIGNED_CLAIMS).map(lambda hc: raw_token(*hc, rsa_sign))
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(secret=HOSTILE_TOKENS)
def test_any_token_gives_none_or_a_principal_never_an_exception(secret: str) -> None:
    async def authenticate() -> Principal | None:
        auth = authenticator(Idp(RSA), Clocks())
        try:
            return await auth.authenticate(SCOPE, secret)
        finally:
            await auth.stop()

    assert isinstance(asyncio.run(authenticate()), Principal | None)
