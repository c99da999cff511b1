"""Proxy-issued access tokens as JWTs, signed and verified to the JWT BCP (RFC 8725).

What we sign is what we accept, and nothing else: one asymmetric algorithm from config
(never from the token's header), ``typ: at+jwt`` (RFC 9068) so that no other JWT passes
as an access token, a ``kid`` that must name one of our keys exactly, and only the header
parameters we write (``alg``, ``kid``, ``typ``): ``crit``, ``jku``, ``jwk``, ``x5u``, ``b64``
and anything unknown are refused. ``iss`` and ``aud`` compare exactly; ``exp``, ``nbf`` and
``iat`` are required and checked with a small leeway. Oversized tokens are refused before
any decoding. The keys that sign and check the signatures are ``SigningKey``s
(``_signing_key``, over joserfc); this module needs neither joserfc nor cryptography, so
they load only with the first key. What both read of a token's header is
``_token_header``.

A verified token is cached until it expires, so the hot path costs a dictionary lookup,
a clock read and a revocation-set lookup instead of a signature check; revocation is
therefore checked on every request, cached or not. A valid signature is not enough, since
whoever reads the signing key could sign anything: ``admit`` then checks the token against
its family (it must exist, be live, and its owner too), from a cache of families as well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.auth._token_header import token_header

if TYPE_CHECKING:
    from llm_proxy_mw.auth._signing_key import SigningKey

__all__ = ["AccessToken", "ProxyTokenAuthenticator"]

#: Longer tokens are refused before any decoding (RFC 8725 §3.5 spirit; ours are ~500 B).
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified access token: who it speaks for, its family, and until when."""

    principal: Principal
    family: str
    expires: float
    claims: dict[str, Any]


class ProxyTokenAuthenticator:
    """Resolves proxy-issued access tokens. ``revoked`` holds the revoked family ids (kept
    current by the token service); ``keys`` maps each accepted ``kid`` to its key.

    ``load_keys``, when set, is awaited while there is no key yet and a token-shaped secret
    comes in: the token service loads its key on demand that way (``use_key``). ``admit``,
    when set, is awaited for every verified token and must say yes for it to count.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        leeway: float,
        revoked: Container[str],
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        load_keys: Callable[[], Awaitable[None]] | None = None,
        admit: Callable[[AccessToken], Awaitable[bool]] | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.revoked = revoked
        self.clock = clock
        self.cache_size = cache_size
        self.keys: dict[str, SigningKey] = {}
        self.load_keys = load_keys
        self.admit = admit
        # token -> (accepted until, family, verified token); dicts keep insertion order,
        # so the first entry is the oldest one to evict.
        self._cache: dict[str, tuple[float, str, AccessToken]] = {}

    def use_key(self, key: SigningKey) -> None:
        self.keys = {key.kid: key}
        self._cache.clear()

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        if secret is None:
            return None
        if not self.keys and self.load_keys is not None and _token_shaped(secret):
            await self.load_keys()
        verified = self.verify(secret)
        if verified is None or (self.admit is not None and not await self.admit(verified)):
            return None
        return verified.principal

    def verify(self, token: str) -> AccessToken | None:
        """The verified access token, or ``None`` for anything else (no reason is given).
        Signature, claims and revocation only: ``authenticate`` also asks ``admit``."""
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


def _token_shaped(secret: str) -> bool:
    # The length first, as in ``verify``: an oversized secret is never decoded. An API key
    # or a refresh token is not shaped like a JWS, so it never loads the key.
    return len(secret) <= MAX_TOKEN_BYTES and token_header(secret) is not None


def _is_time(*values: float) -> bool:
    # NumericDate is a finite JSON number; a bool is an int to Python but not a date.
    # An int is always finite (and math.isfinite overflows on a huge one).
    return all(not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v)) for v in values)
