"""Proxy-issued access tokens as JWTs, signed and verified to the JWT BCP (RFC 8725).

What we sign is what we accept, and nothing else: one asymmetric algorithm from config
(never from the token's header), ``typ: at+jwt`` (RFC 9068) so that no other JWT passes
as an access token, a ``kid`` that must name one of our keys exactly, and only the header
parameters we write (``alg``, ``kid``, ``typ``): ``crit``, ``jku``, ``jwk``, ``x5u``, ``b64``
and anything unknown are refused. ``iss`` and ``aud`` compare exactly; ``exp``, ``nbf`` and
``iat`` are required and checked with a small leeway. Oversized tokens are refused before
any decoding.

Config's ``EdDSA`` signs with Ed25519 under the fully specified JWS name ``Ed25519``
(RFC 9864), which joserfc recommends over the deprecated polymorphic ``EdDSA``.

A verified token is cached until it expires, so the hot path costs a dictionary lookup,
a clock read and a revocation-set lookup instead of a signature check; revocation is
therefore checked on every request, cached or not.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from joserfc import jwk, jws, jwt
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry
from joserfc.registry import JWS_HEADER_REGISTRY
from starlette.types import Scope

from llm_proxy_mw.auth._principal import Principal

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AccessToken",
    "ProxyTokenAuthenticator",
    "SigningKey",
    "token_header",
]

ACCESS_TOKEN_TYPE = "at+jwt"
#: Longer tokens are refused before any decoding (RFC 8725 §3.5 spirit; ours are ~500 B).
MAX_TOKEN_BYTES = 8192

_JWS_ALGORITHM = {"EdDSA": "Ed25519", "ES256": "ES256"}
_KEY_TYPE: dict[str, tuple[str, str]] = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}
_HEADER = frozenset({"alg", "kid", "typ"})
_TYPES = frozenset({ACCESS_TOKEN_TYPE, "application/" + ACCESS_TOKEN_TYPE})
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class _Registry(JWSRegistry):
    # Only the header parameters our tokens carry; joserfc refuses any other one.
    default_header_registry = {name: JWS_HEADER_REGISTRY[name] for name in sorted(_HEADER)}


class SigningKey:
    """The proxy's private signing key; its public half is the JWKS. ``kid`` is the key's
    RFC 7638 thumbprint, so it changes exactly when the key does."""

    def __init__(self, key: jwk.OKPKey | jwk.ECKey, algorithm: str) -> None:
        self.algorithm = algorithm
        self.jws_algorithm = _JWS_ALGORITHM[algorithm]
        self.kid = key.thumbprint()
        self.registry = _Registry(algorithms=[self.jws_algorithm])
        self._key = key
        public = {k: v for k, v in key.as_dict(private=False).items() if k != "kid"}
        self.public_jwk: dict[str, Any] = {
            **public,
            "kid": self.kid,
            "alg": self.jws_algorithm,
            "use": "sig",
        }
        self.public_key = type(key).import_key(public)

    @classmethod
    def generate(cls, algorithm: str) -> SigningKey:
        kty, curve = _KEY_TYPE[algorithm]
        if kty == "OKP":
            return cls(jwk.generate_key("OKP", "Ed25519"), algorithm)
        return cls(jwk.generate_key("EC", "P-256"), algorithm)

    @classmethod
    def from_jwk(cls, text: str, algorithm: str) -> SigningKey:
        """Import a private JWK. Errors say what is wrong, never what the key holds."""
        kty, curve = _KEY_TYPE[algorithm]
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("the signing key is not a JSON object (a private JWK)") from None
        if not isinstance(data, dict) or data.get("kty") != kty or data.get("crv") != curve:
            raise ValueError(f"the signing key must be a {kty} {curve} JWK for {algorithm}")
        if "d" not in data:
            raise ValueError('the signing key must be a private JWK (with "d")')
        members = {k: data[k] for k in ("kty", "crv", "x", "y", "d") if k in data}
        try:
            imported = jwk.import_key(members, "OKP" if kty == "OKP" else "EC")
            key = cls(imported, algorithm)
            probe = key.sign({"probe": True})
            valid = key.decode(probe) is not None
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise ValueError(f"the signing key is not a valid {kty} {curve} private JWK")
        return key

    def to_jwk(self) -> str:
        """The private JWK, for the store only."""
        return json.dumps(self._key.as_dict(private=True), separators=(",", ":"))

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": self.jws_algorithm, "kid": self.kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(header, claims, self._key, registry=self.registry)

    def decode(self, token: str, header: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The claims of a token this key signed, after every header check, else ``None``.
        ``header`` is the token's header when the caller parsed it already. Claims are not
        validated here."""
        header = header if header is not None else token_header(token)
        if (
            header is None
            or not header.keys() <= _HEADER
            or header.get("alg") != self.jws_algorithm
            or header.get("kid") != self.kid
            or str(header.get("typ")).lower() not in _TYPES
        ):
            return None
        try:
            signed = jws.deserialize_compact(token, self.public_key, registry=self.registry)
            claims = json.loads(signed.payload or b"")
        except (JoseError, ValueError, RecursionError):
            return None
        return claims if isinstance(claims, dict) else None


def token_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS, or ``None`` when the token is not shaped like one.
    Nothing in it is trusted yet."""
    header_segment = token.partition(".")[0]
    if token.count(".") != 2 or not _B64URL.fullmatch(header_segment):
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(header_segment + "=" * 3))
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified access token: who it speaks for, its family, and until when."""

    principal: Principal
    family: str
    expires: float
    claims: dict[str, Any]


class ProxyTokenAuthenticator:
    """Resolves proxy-issued access tokens. ``revoked`` holds the revoked family ids (kept
    current by the token service); ``keys`` maps each accepted ``kid`` to its key."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        leeway: float,
        revoked: Container[str],
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.revoked = revoked
        self.clock = clock
        self.cache_size = cache_size
        self.keys: dict[str, SigningKey] = {}
        # token -> (accepted until, family, verified token); dicts keep insertion order,
        # so the first entry is the oldest one to evict.
        self._cache: dict[str, tuple[float, str, AccessToken]] = {}

    def use_key(self, key: SigningKey) -> None:
        self.keys = {key.kid: key}
        self._cache.clear()

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        if secret is None:
            return None
        verified = self.verify(secret)
        return verified.principal if verified is not None else None

    def verify(self, token: str) -> AccessToken | None:
        """The verified access token, or ``None`` for anything else (no reason is given)."""
        if len(token) > MAX_TOKEN_BYTES:
            return None
        cached = self._cache.get(token)
        if cached is not None:
            until, family, verified = cached
            if self.clock() < until and family not in self.revoked:
                return verified
            if self.clock() >= until:
                del self._cache[token]
            return None
        fresh = self._verify_signed(token)
        if fresh is None or fresh.family in self.revoked:
            return None
        if len(self._cache) >= self.cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[token] = (fresh.expires + self.leeway, fresh.family, fresh)
        return fresh

    def _verify_signed(self, token: str) -> AccessToken | None:
        header = token_header(token)
        kid = header.get("kid") if header is not None else None
        key = self.keys.get(kid) if isinstance(kid, str) else None
        claims = key.decode(token, header) if key is not None else None
        return self._validate(claims, self.clock()) if claims is not None else None

    def _validate(self, claims: dict[str, Any], now: float) -> AccessToken | None:
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        sub, fam, scope, adm = (
            claims.get("sub"),
            claims.get("fam"),
            claims.get("scope"),
            claims.get("adm"),
        )
        if not (
            claims.get("iss") == self.issuer
            and claims.get("aud") == self.audience
            and isinstance(exp, int | float)
            and isinstance(nbf, int | float)
            and isinstance(iat, int | float)
            and _is_time(exp, nbf, iat)
            and isinstance(sub, str)
            and sub
            and isinstance(fam, str)
            and fam
            and isinstance(claims.get("jti"), str)
            and isinstance(adm, bool)
            and isinstance(scope, str)
        ):
            return None
        if now >= exp + self.leeway or nbf > now + self.leeway or iat > now + self.leeway:
            return None
        principal = Principal(
            name=sub, kind="token", admin=adm, scopes=frozenset(scope.split()), subject=sub
        )
        return AccessToken(principal, fam, float(exp), claims)


def _is_time(*values: float) -> bool:
    # NumericDate is a finite JSON number; a bool is an int to Python but not a date.
    # An int is always finite (and math.isfinite overflows on a huge one).
    return all(not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v)) for v in values)
