"""Client API keys from config, kept and compared only as SHA-256 digests.

A presented key is hashed once and looked up by its digest: the lookup's timing depends on
the digest, which an attacker cannot steer towards a stored one, so it reveals nothing
about the keys (the same argument as comparing digests with ``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from starlette.types import Scope

from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.config import ApiKeyConfig

__all__ = ["ApiKeyAuthenticator"]


class ApiKeyAuthenticator:
    """Resolves a presented secret to the principal of a configured API key."""

    def __init__(self, keys: Iterable[ApiKeyConfig]) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for key in keys:
            if key.key is not None:
                digest = hashlib.sha256(key.key.get_secret_value().encode()).digest()
            else:
                assert key.key_sha256 is not None
                digest = bytes.fromhex(key.key_sha256)
            self._by_digest[digest] = Principal(name=key.name, kind="api_key", admin=key.admin)

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        if secret is None:
            return None
        return self._by_digest.get(hashlib.sha256(secret.encode()).digest())
