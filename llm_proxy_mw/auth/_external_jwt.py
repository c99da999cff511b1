"""Access tokens of external identity providers, verified as a resource server (RFC 8725).

Each ``[auth.jwt_issuers.<name>]`` names an issuer, the audience its tokens must carry and
its JWKS URL. A token is picked up only when its (unverified) ``iss`` is exactly a configured
issuer; then, before any key is used: size at most ``max_token_bytes``, ``alg`` from that
issuer's allow-list (never from the token alone), a ``typ`` of an access token (RFC 9068) or a
plain JWT when there is one, no claim only an OpenID Connect ID token has (unless the issuer
accepts ID tokens), a key by ``kid`` from the cached JWKS, and unknown ``crit`` headers
refused. The claims need the exact ``iss``, an ``aud`` containing the audience, ``exp``, and a
valid ``nbf``/``iat``, with a small leeway. Segments that are not JSON, or nested deeper than
the parser recurses, are refused like any other junk.

An unknown ``kid`` refetches the JWKS (the provider rotated its keys), at most once per
``refetch_interval`` per issuer and one fetch at a time, so junk tokens cannot make us hammer
the provider; the keys are refetched anyway when older than ``keys_max_age``. A fetch
(``_http_fetch``: one deadline, a bounded body, no redirects) that fails keeps the keys held so
far. Verified tokens are cached (by digest) until they expire.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, import_key
from joserfc.jws import JWSRegistry
from starlette.types import Scope

from llm_proxy_mw._http_fetch import HttpFetcher
from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.config import JwtIssuerConfig
from llm_proxy_mw.errors import FetchError

if TYPE_CHECKING:
    import httpx

__all__ = ["ExternalJwtAuthenticator"]

logger = logging.getLogger("llm_proxy_mw")

#: ``typ`` values of an access token, compared case-insensitively without the optional
#: ``application/`` prefix (RFC 7515 §4.1.9): RFC 9068's ``at+jwt``, and a plain ``JWT``.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "jwt"})
#: Claims of an OpenID Connect ID token that no access token carries (OIDC Core §2, §3.3.2.11).
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _is_access_token(header: Mapping[str, Any], claims: Mapping[str, Any], id_tokens: bool) -> bool:
    """Not some other JWT of the issuer (a logout token, an ID token) that names our audience."""
    if "typ" in header:
        typ = header["typ"]
        if not isinstance(typ, str):
            return False
        if typ.lower().removeprefix("application/") not in ACCESS_TOKEN_TYPES:
            return False
    return id_tokens or not any(name in claims for name in ID_TOKEN_CLAIMS)


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (RFC 8693/9068: space-separated) or ``scp`` (Azure, Okta: a list or string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


class _Issuer:
    """One issuer's policy and its cached signing keys."""

    def __init__(self, name: str, config: JwtIssuerConfig) -> None:
        self.name = name
        self.config = config
        self.registry = JWSRegistry(algorithms=config.algorithms, strict_check_header=False)
        self.keys: dict[str | None, list[Key]] = {}
        self.fetched_at: float | None = None
        self.attempted_at: float | None = None
        self.lock = asyncio.Lock()

    def find(self, kid: str | None) -> Key | None:
        keys = self.keys.get(kid, [])
        if kid is None and not keys and len(self.keys) == 1:
            # No ``kid`` in the token: fine only while the JWKS holds a single key id.
            keys = next(iter(self.keys.values()))
        return keys[0] if len(keys) == 1 else None

    def load(self, jwks: Any) -> None:
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("not a JWK set")
        keys: dict[str | None, list[Key]] = {}
        for data in jwks["keys"]:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig" or "d" in data:
                continue  # encryption keys, and never a private key someone published
            try:
                key = import_key(data)
            except (JoseError, ValueError, TypeError):
                continue  # a key type or curve we do not know: the others still count
            kid = data.get("kid") if isinstance(data.get("kid"), str) else None
            keys.setdefault(kid, []).append(key)
        self.keys = keys

    def principal(self, claims: Mapping[str, Any]) -> Principal | None:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return None
        scopes = _scopes(claims)
        if not scopes.issuperset(self.config.required_scopes):
            return None
        name = claims.get(self.config.name_claim)
        return Principal(
            name=name if isinstance(name, str) and name else subject,
            kind="jwt",
            admin=subject in self.config.admin_subjects,
            scopes=scopes,
            subject=f"{self.name}:{subject}",
        )


class ExternalJwtAuthenticator:
    """Resolves bearer tokens of the configured issuers to principals of kind ``jwt``.

    ``transport`` (an ``httpx.AsyncBaseTransport``) and the clocks are injectable for tests;
    ``timeout`` is in seconds for a whole JWKS fetch. The HTTP client is created on first use
    and closed by ``stop``.
    """

    def __init__(
        self,
        issuers: Mapping[str, JwtIssuerConfig],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
        leeway: int = 30,
        refetch_interval: float = 30.0,
        keys_max_age: float = 3600.0,
        max_token_bytes: int = 8192,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers = {c.issuer: _Issuer(name, c) for name, c in issuers.items()}
        self._fetcher = HttpFetcher(transport=transport, timeout=timeout)
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self.keys_max_age = keys_max_age
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.clock = clock
        self.monotonic = monotonic
        self._verified: dict[bytes, tuple[Principal, float]] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._fetcher.aclose()

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        if secret is None or len(secret) > self.max_token_bytes or secret.count(".") != 2:
            return None
        digest = hashlib.sha256(secret.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            if cached[1] > self.clock():
                return cached[0]
            del self._verified[digest]
        try:
            header_segment, payload_segment, _ = secret.split(".")
            header, claims = _b64json(header_segment), _b64json(payload_segment)
        except (ValueError, binascii.Error, RecursionError):
            return None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return None
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None or header.get("alg") not in issuer.config.algorithms:
            return None
        if not _is_access_token(header, claims, issuer.config.accept_id_tokens):
            return None
        kid = header.get("kid")
        key = await self._key(issuer, kid if isinstance(kid, str) else None)
        if key is None:
            return None
        now = int(self.clock())
        try:
            token = jwt.decode(secret, key, registry=issuer.registry)
            jwt.JWTClaimsRegistry(
                now=now,
                leeway=self.leeway,
                iss={"essential": True, "value": issuer.config.issuer},
                aud={"essential": True, "value": issuer.config.audience},
                exp={"essential": True},
            ).validate(token.claims)
        except (JoseError, ValueError, TypeError):
            return None
        principal = issuer.principal(token.claims)
        if principal is not None:
            # ``exp`` as is: an integer past the float range is still a valid NumericDate.
            self._remember(digest, principal, token.claims["exp"])
        return principal

    def _remember(self, digest: bytes, principal: Principal, expires_at: float) -> None:
        if len(self._verified) >= self.cache_size:
            now = self.clock()
            self._verified = {d: e for d, e in self._verified.items() if e[1] > now}
            while len(self._verified) >= self.cache_size:
                del self._verified[next(iter(self._verified))]
        self._verified[digest] = (principal, expires_at)

    async def _key(self, issuer: _Issuer, kid: str | None) -> Key | None:
        key = issuer.find(kid)
        if key is not None and not self._stale(issuer):
            return key
        async with issuer.lock:
            key = issuer.find(kid)  # another request may have refetched meanwhile
            if key is not None and not self._stale(issuer):
                return key
            last = issuer.attempted_at
            if last is not None and self.monotonic() - last < self.refetch_interval:
                return key
            await self._fetch(issuer)
            return issuer.find(kid)

    def _stale(self, issuer: _Issuer) -> bool:
        fetched = issuer.fetched_at
        return fetched is None or self.monotonic() - fetched > self.keys_max_age

    async def _fetch(self, issuer: _Issuer) -> None:
        """Load the issuer's JWKS; on failure the keys held so far stay in use."""
        issuer.attempted_at = self.monotonic()
        try:
            answer = await self._fetcher.get(issuer.config.jwks_url)
            if answer.status != 200:
                raise ValueError(f"status {answer.status}")
            issuer.load(answer.json())
        except (FetchError, ValueError) as exc:
            logger.warning("jwks of issuer %s not loaded: %s", issuer.name, exc)
            return
        issuer.fetched_at = self.monotonic()
        logger.debug("jwks of issuer %s loaded: %d key ids", issuer.name, len(issuer.keys))
