"""``SigningKey``: the proxy's private key for its access tokens, over joserfc.

Kept apart from the verifier (``_jwt_auth``) so that joserfc and cryptography load only
when a key is: a proxy whose tokens are never used does not pay for them at start-up. The
two share only ``_token_header``, so neither imports the other.

Config's ``EdDSA`` signs with Ed25519 under the fully specified JWS name ``Ed25519``
(RFC 9864), which joserfc recommends over the deprecated polymorphic ``EdDSA``.
"""

from __future__ import annotations

import json
from typing import Any

from joserfc import jwk, jws, jwt
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry
from joserfc.registry import JWS_HEADER_REGISTRY

from llm_proxy_mw.auth._token_header import ACCESS_TOKEN_TYPE, HEADER_PARAMETERS, token_header

__all__ = ["SigningKey"]

_JWS_ALGORITHM = {"EdDSA": "Ed25519", "ES256": "ES256"}
_KEY_TYPE: dict[str, tuple[str, str]] = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}
_TYPES = frozenset({ACCESS_TOKEN_TYPE, "application/" + ACCESS_TOKEN_TYPE})


class _Registry(JWSRegistry):
    # Only the header parameters our tokens carry; joserfc refuses any other one.
    default_header_registry = {
        name: JWS_HEADER_REGISTRY[name] for name in sorted(HEADER_PARAMETERS)
    }


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
            or not header.keys() <= HEADER_PARAMETERS
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
