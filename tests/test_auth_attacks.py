"""Attacks on proxy-issued tokens (RFC 8725), each one a test against the real proxy.

Forged tokens are signed here by hand, most with the proxy's own private key, so that each
one fails for the reason the test names and no other: a control test shows that the same
forging code with honest header and claims is accepted.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwk

from llm_proxy_mw.auth import _jwt_auth
from llm_proxy_mw.auth._tokens import TokenService
from tests.test_auth_tokens import USER, bearer, mint, proxy_config, refresh, running, token_service

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class Target:
    client: httpx.AsyncClient
    service: TokenService
    key: jwk.OKPKey  # the proxy's own private key
    header: dict[str, Any]
    claims: dict[str, Any]
    pair: dict[str, Any]

    def forge(
        self,
        header: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        key: jwk.OKPKey | None = None,
        **claims: Any,
    ) -> str:
        """A token over these header and claims (merged into honest ones), Ed25519-signed.
        A header value of ``None`` removes that parameter."""
        body = {k: v for k, v in {**self.claims, **claims}.items() if k not in drop}
        merged = {k: v for k, v in {**self.header, **(header or {})}.items() if v is not None}
        signing_input = f"{b64_json(merged)}.{b64_json(body)}"
        signature = (key or self.key).private_key
        assert signature is not None
        return f"{signing_input}.{b64(signature.sign(signing_input.encode()))}"

    async def accepted(self, token: str) -> bool:
        response = await self.client.post("/v1/chat/completions", json=CHAT, headers=bearer(token))
        assert response.status_code in (200, 401), response.text
        if response.status_code == 401:
            assert response.json()["error"]["message"] == "Invalid or missing credentials."
        return response.status_code == 200


@contextlib.asynccontextmanager
async def target(tmp_path: Path) -> AsyncIterator[Target]:
    async with running(proxy_config(tmp_path)) as (proxy, client):
        pair = await mint(client, USER)
        signing = token_service(proxy).key
        assert signing is not None
        key = jwk.OKPKey.import_key(json.loads(signing.to_jwk()))
        header_segment, claims_segment, _ = pair["access_token"].split(".")
        header, claims = (
            json.loads(base64.urlsafe_b64decode(s + "==")) for s in (header_segment, claims_segment)
        )
        yield Target(client, token_service(proxy), key, header, claims, pair)


@pytest.mark.anyio
async def test_control_honest_forgery_is_accepted(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        assert await t.accepted(t.forge())
        assert await t.accepted(t.pair["access_token"])


@pytest.mark.anyio
async def test_alg_none(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        for alg in ("none", "None", "NONE"):
            unsigned = f"{b64_json({**t.header, 'alg': alg})}.{b64_json(t.claims)}."
            assert not await t.accepted(unsigned)


@pytest.mark.anyio
async def test_hs256_signed_with_the_public_key(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        public = t.key.as_dict(private=False)
        jwks = (await t.client.get("/.well-known/jwks.json")).text
        raw = base64.urlsafe_b64decode(public["x"] + "==")
        pem = t.key.as_pem(private=False)
        for secret in (raw, pem, jwks.encode(), json.dumps(public).encode(), public["x"].encode()):
            signing_input = f"{b64_json({**t.header, 'alg': 'HS256'})}.{b64_json(t.claims)}"
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            assert not await t.accepted(f"{signing_input}.{b64(mac)}")


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256", "Ed448", "ed25519"])
async def test_an_algorithm_other_than_the_configured_one(tmp_path: Path, alg: str) -> None:
    async with target(tmp_path) as t:
        # The Ed25519 signature itself is valid: only the header's alg differs.
        assert not await t.accepted(t.forge({"alg": alg}))


@pytest.mark.anyio
async def test_wrong_issuer(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge(iss="https://evil.example"))
        assert not await t.accepted(t.forge(drop=("iss",)))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "iss",
    [
        "llm_proxy_mw.evil",
        "evil.llm_proxy_mw",
        "llm_proxy_mwx",
        "xllm_proxy_mw",
        "llm_proxy_m",
        "llm_proxy_mw ",
        "LLM_PROXY_MW",
        "llm_proxy_mw\u200b",
        "llm_proxy_mw\x00",
        ["llm_proxy_mw"],
        {"iss": "llm_proxy_mw"},
    ],
)
async def test_look_alike_issuer(tmp_path: Path, iss: object) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge(iss=iss))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "aud", ["other-service", "llm_proxy_mw.evil", "", ["other", "llm_proxy_mw"], None]
)
async def test_wrong_audience(tmp_path: Path, aud: object) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge(aud=aud))


@pytest.mark.anyio
async def test_expired(tmp_path: Path) -> None:
    now = int(time.time())
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge(exp=now - 31, iat=now - 100, nbf=now - 100))
        assert not await t.accepted(t.forge(drop=("exp",)))
        for exp in ("9999999999", True, None, 1e400, float("nan")):
            assert not await t.accepted(t.forge(exp=exp))
        assert await t.accepted(t.forge(exp=now - 20))  # inside the 30 s leeway


@pytest.mark.anyio
async def test_not_yet_valid(tmp_path: Path) -> None:
    now = int(time.time())
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge(nbf=now + 60))
        assert not await t.accepted(t.forge(iat=now + 60))
        assert not await t.accepted(t.forge(drop=("nbf",)))
        assert await t.accepted(t.forge(nbf=now + 20))  # clock skew inside the leeway


@pytest.mark.anyio
async def test_unknown_crit(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(
            t.forge({"crit": ["x-must-understand"], "x-must-understand": 1})
        )
        assert not await t.accepted(t.forge({"crit": ["b64"], "b64": False}))
        assert not await t.accepted(t.forge({"crit": 5}))
        assert not await t.accepted(t.forge({"crit": []}))


@pytest.mark.anyio
async def test_header_that_points_at_another_key(tmp_path: Path) -> None:
    attacker = jwk.generate_key("OKP", "Ed25519")
    embedded = attacker.as_dict(private=False)
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge({"jwk": embedded}, key=attacker))
        assert not await t.accepted(t.forge({"jku": "https://evil.example/jwks"}, key=attacker))
        assert not await t.accepted(t.forge({"x5u": "https://evil.example/cert"}, key=attacker))


@pytest.mark.anyio
async def test_a_megabyte_token_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = _jwt_auth.token_header
    monkeypatch.setattr(_jwt_auth, "token_header", lambda t: decoded.append(t) or real(t))
    async with target(tmp_path) as t:
        decoded.clear()  # starting up decoded a probe token of its own
        header = b64_json(t.header)
        huge = f"{header}.{'A' * 1_000_000}.{'A' * 86}"
        started = time.perf_counter()
        verdict = t.service.authenticator.verify(huge)
        elapsed = time.perf_counter() - started
        assert verdict is None and decoded == []
        assert elapsed < 0.005
        assert not await t.accepted(huge)
        introspected = await t.client.post(
            "/auth/introspect", data={"token": "x"}, headers=bearer(huge)
        )
    assert introspected.status_code == 401
    assert decoded == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "kid",
    ["../../../../etc/passwd", "' OR 1=1 --", "x'; DROP TABLE token_families; --", "*", ""],
)
async def test_kid_with_path_or_sql_characters(tmp_path: Path, kid: str) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge({"kid": kid}))
        if kid:
            assert not await t.accepted(t.forge({"kid": t.header["kid"] + kid}))
        assert await t.accepted(t.pair["access_token"])  # the store is intact


@pytest.mark.anyio
async def test_refresh_token_used_as_a_bearer(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(t.pair["refresh_token"])
        response = await t.client.post(
            "/v1/messages",
            json={**CHAT, "max_tokens": 5},
            headers={"x-api-key": t.pair["refresh_token"]},
        )
        assert response.status_code == 401


@pytest.mark.anyio
async def test_access_token_used_as_a_refresh_token(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        response = await refresh(t.client, t.pair["access_token"])
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
        assert await t.accepted(t.pair["access_token"])  # and nothing was revoked


@pytest.mark.anyio
async def test_another_key_with_the_same_kid(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        impostor = jwk.generate_key("OKP", "Ed25519")
        assert not await t.accepted(t.forge(key=impostor))


@pytest.mark.anyio
@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+JWT-x", "application/jwt", None])
async def test_a_jwt_that_is_not_an_access_token(tmp_path: Path, typ: str | None) -> None:
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge({"typ": typ}))


@pytest.mark.anyio
async def test_tampered_claims_keep_the_old_signature(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        header, _, signature = t.pair["access_token"].split(".")
        for change in ({"adm": True}, {"sub": "root"}, {"exp": t.claims["exp"] + 86_400}):
            tampered = f"{header}.{b64_json({**t.claims, **change})}.{signature}"
            assert not await t.accepted(tampered)


@pytest.mark.anyio
async def test_a_token_signed_with_the_real_key_for_an_invented_family(tmp_path: Path) -> None:
    """Whoever reads the signing key must still not be able to invent a family, nor lift a
    real one to admin or to another owner: the family is checked against the store."""
    async with target(tmp_path) as t:
        assert not await t.accepted(t.forge(fam="tf_invented", adm=True, sub="api_key:root"))
        assert not await t.accepted(t.forge(fam="tf_invented"))
        assert not await t.accepted(t.forge(adm=True))  # the real family is not an admin one
        assert not await t.accepted(t.forge(sub="api_key:root"))  # nor root's
        assert not await t.accepted(t.forge(scope="admin"))
        assert not await t.accepted(t.forge(exp=t.claims["exp"] + 31 * 86_400))  # past it
        assert await t.accepted(t.pair["access_token"])


@pytest.mark.anyio
async def test_a_familys_liveness_is_cached_and_revocation_still_applies(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        store = t.service.store
        lookups: list[str] = []
        real = store.family

        async def family(family_id: str) -> Any:
            lookups.append(family_id)
            return await real(family_id)

        store.family = family  # type: ignore[method-assign]
        fresh = await refresh(t.client, t.pair["refresh_token"])
        token = fresh.json()["access_token"]
        for _ in range(3):
            assert await t.accepted(token)
        assert lookups == [t.pair["id"]]  # one store read, however many requests
        deleted = await t.client.delete(f"/auth/tokens/{t.pair['id']}", headers=USER)
        assert deleted.status_code == 200
        assert not await t.accepted(token)


@pytest.mark.anyio
async def test_claims_of_the_wrong_type(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        for claims in ({"adm": "true"}, {"adm": 1}, {"sub": ""}, {"sub": 7}, {"fam": None}):
            assert not await t.accepted(t.forge(**claims))
        assert not await t.accepted(t.forge(drop=("fam",)))
        assert not await t.accepted(t.forge(drop=("jti",)))


@pytest.mark.anyio
async def test_malformed_tokens(tmp_path: Path) -> None:
    async with target(tmp_path) as t:
        good = t.pair["access_token"]
        for token in (
            "a.b",
            "a.b.c.d",
            good + ".",
            "." + good,
            good.replace(".", "..", 1),
            "!!!." + good.split(".", 1)[1],
            b64(b"[1,2]") + "." + good.split(".", 1)[1],
            b64(b"[" * 5000) + "." + good.split(".", 1)[1],
            good[:-1] + ("A" if good[-1] != "A" else "B"),
        ):
            assert not await t.accepted(token)
