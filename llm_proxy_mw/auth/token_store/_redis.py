"""Redis token store: one set of families and revocations for several replicas.

Layout, under a key prefix (default ``llm_proxy_mw:tokens:``, apart from the metrics keys):

- ``signing_key:<algorithm>``: the private JWK, written with ``SET NX`` so that of two
  replicas generating a key at once, the first write wins and both use it;
- ``family:<id>``: a hash (owner, name, admin, scope, access_ttl, created, expires, revoked,
  identity);
- ``families``: a sorted set of family ids scored by their expiry, for listing and purging;
- ``owner:<owner>``: a sorted set of the owner's unrevoked family ids scored by their expiry,
  to cap how many one owner holds;
- ``refresh:<sha256>``: a hash (family, issued, used) per refresh token;
- ``revoked``: a sorted set of revoked family ids scored by their expiry;
- channel ``revocations``: each revoked family id, published as it is revoked.

Family and refresh keys expire with their family (``EXPIREAT``), so Redis forgets them by
itself. Adding, rotation and revocation are Lua scripts: a family is added only while its
owner is under the cap, a refresh token is rotated exactly once, and its reuse revokes the
family and tells every replica in the same atomic step.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, cast

from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from llm_proxy_mw._redis_db import RedisStoreBase
from llm_proxy_mw.auth.token_store._base import Family, RefreshRecord, Rotation, StoreError

__all__ = ["RedisTokenStore"]

# KEYS: family, refresh, families, the owner's families. ARGV: now (the family's creation),
# limit (-1: none), family id, expires, then the family's fields as name, value pairs.
_ADD = """
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
local limit = tonumber(ARGV[2])
if limit >= 0 and redis.call('ZCARD', KEYS[4]) >= limit then return 0 end
local expires_at = math.ceil(tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIREAT', KEYS[1], expires_at)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[2], 'family', ARGV[3], 'issued', ARGV[1])
redis.call('EXPIREAT', KEYS[2], expires_at)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[4], math.ceil(tonumber(last[2])))
return 1
"""
# KEYS: old refresh, new refresh, revoked set. ARGV: now, family key prefix, channel,
# owner key prefix.
_ROTATE = """
local family_id = redis.call('HGET', KEYS[1], 'family')
if not family_id then return {'unknown'} end
local family_key = ARGV[2] .. family_id
local fields = redis.call('HGETALL', family_key)
if #fields == 0 then return {'unknown'} end
local family = {}
for i = 1, #fields, 2 do family[fields[i]] = fields[i + 1] end
local status = 'rotated'
if family['revoked'] then
  status = 'revoked'
elseif tonumber(family['expires']) <= tonumber(ARGV[1]) then
  status = 'expired'
elseif redis.call('HEXISTS', KEYS[1], 'used') == 1 then
  status = 'reused'
  redis.call('HSET', family_key, 'revoked', ARGV[1])
  redis.call('ZREM', ARGV[4] .. family['owner'], family_id)
  redis.call('ZADD', KEYS[3], family['expires'], family_id)
  redis.call('PUBLISH', ARGV[3], family_id)
  fields = redis.call('HGETALL', family_key)
else
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
  redis.call('HSET', KEYS[2], 'family', family_id, 'issued', ARGV[1])
  redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(family['expires'])))
end
return {status, family_id, unpack(fields)}
"""
# KEYS: family, revoked set. ARGV: now, family id, channel, owner key prefix.
_REVOKE = """
local expires = redis.call('HGET', KEYS[1], 'expires')
if not expires then return 0 end
redis.call('ZREM', ARGV[4] .. redis.call('HGET', KEYS[1], 'owner'), ARGV[2])
redis.call('HSETNX', KEYS[1], 'revoked', ARGV[1])
redis.call('ZADD', KEYS[2], expires, ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"""


class RedisTokenStore(RedisStoreBase):
    """A ``TokenStore`` in Redis; ``timeout`` bounds every connect and command (seconds)."""

    error = StoreError
    label = "token store"
    operation_prefix = "token store "

    def __init__(
        self, url: str, *, prefix: str = "llm_proxy_mw:tokens:", timeout: float = 5.0
    ) -> None:
        super().__init__(url, prefix=prefix, timeout=timeout)

    async def signing_key(self, algorithm: str, candidate: str) -> str:
        client = self._redis()
        key = f"{self.prefix}signing_key:{algorithm}"
        with self._errors("signing key"):
            await client.set(key, candidate, nx=True)
            stored = cast("str | None", await client.get(key))
        if stored is None:
            raise StoreError(f"{self.url}: the signing key vanished right after it was stored")
        return stored

    async def add_family(
        self, family: Family, refresh_hash: str, *, limit: int | None = None
    ) -> bool:
        keys = [
            f"{self.prefix}family:{family.id}",
            f"{self.prefix}refresh:{refresh_hash}",
            f"{self.prefix}families",
            f"{self._owner_prefix}{family.owner}",
        ]
        args: list[EncodableT] = [repr(family.created), -1 if limit is None else limit]
        args += [family.id, repr(family.expires)]
        args += [item for pair in _fields(family).items() for item in pair]
        with self._errors("add family"):
            added = await self._redis().eval(_ADD, len(keys), *keys, *args)
        return bool(added)

    async def family(self, family_id: str) -> Family | None:
        with self._errors("get family"):
            key = f"{self.prefix}family:{family_id}"
            fields = cast("dict[str, str]", await self._redis().hgetall(key))
        return _family(family_id, fields) if fields else None

    async def families(self, owner: str | None, now: float) -> list[Family]:
        client = self._redis()
        with self._errors("list families"):
            ids = cast(
                "list[str]",
                await client.zrangebyscore(f"{self.prefix}families", f"({now}", "+inf"),
            )
            async with client.pipeline(transaction=False) as pipe:
                for family_id in ids:
                    pipe.hgetall(f"{self.prefix}family:{family_id}")
                hashes: list[dict[str, str]] = await pipe.execute()
        found = [_family(i, fields) for i, fields in zip(ids, hashes, strict=True) if fields]
        found = [f for f in found if owner is None or f.owner == owner]
        return sorted(found, key=lambda f: (f.created, f.id))

    async def refresh_record(self, refresh_hash: str) -> RefreshRecord | None:
        client = self._redis()
        with self._errors("get refresh token"):
            key = f"{self.prefix}refresh:{refresh_hash}"
            record = cast("dict[str, str]", await client.hgetall(key))
            if not record:
                return None
            family = await self.family(record["family"])
        if family is None:
            return None
        used = record.get("used")
        return RefreshRecord(family, float(record["issued"]), float(used) if used else None)

    async def rotate(self, old_hash: str, new_hash: str, now: float) -> Rotation:
        keys = [
            f"{self.prefix}refresh:{old_hash}",
            f"{self.prefix}refresh:{new_hash}",
            f"{self.prefix}revoked",
        ]
        args = [repr(now), f"{self.prefix}family:", self._channel, self._owner_prefix]
        with self._errors("rotate"):
            result = cast("list[str]", await self._redis().eval(_ROTATE, len(keys), *keys, *args))
        status, rest = result[0], result[1:]
        if not rest:
            return Rotation("unknown")
        fields = dict(zip(rest[1::2], rest[2::2], strict=True))
        return Rotation(cast("Any", status), _family(rest[0], fields))

    async def revoke(self, family_id: str, now: float) -> bool:
        keys = [f"{self.prefix}family:{family_id}", f"{self.prefix}revoked"]
        with self._errors("revoke"):
            done = await self._redis().eval(
                _REVOKE, len(keys), *keys, repr(now), family_id, self._channel, self._owner_prefix
            )
        return bool(done)

    async def revoked(self, now: float) -> dict[str, float]:
        with self._errors("load revocations"):
            pairs = cast(
                "list[tuple[str, float]]",
                await self._redis().zrangebyscore(
                    f"{self.prefix}revoked", f"({now}", "+inf", withscores=True
                ),
            )
        return {family_id: float(expires) for family_id, expires in pairs}

    async def revocations(self) -> AsyncGenerator[str | None, None]:
        pubsub = self._redis().pubsub()
        try:
            with self._errors("subscribe"):
                await pubsub.subscribe(self._channel)
            while True:
                with self._errors("listen"):
                    # A bounded wait, so that a dead connection surfaces as an error.
                    message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    # Confirmed: from here on no revocation is missed, so reload now.
                    yield None
                elif message.get("type") == "message":
                    yield str(message["data"])
        finally:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass  # the connection is gone already, which is all aclose would achieve

    async def purge(self, now: float) -> int:
        client = self._redis()
        with self._errors("purge"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(f"{self.prefix}families", "-inf", now)
                pipe.zremrangebyscore(f"{self.prefix}revoked", "-inf", now)
                purged, _ = await pipe.execute()
        return int(purged)

    @property
    def _channel(self) -> str:
        return f"{self.prefix}revocations"

    @property
    def _owner_prefix(self) -> str:
        return f"{self.prefix}owner:"


def _fields(family: Family) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {
        "owner": family.owner,
        "name": family.name,
        "admin": int(family.admin),
        "scope": family.scope,
        "access_ttl": family.access_ttl,
        "created": repr(family.created),
        "expires": repr(family.expires),
    }
    if family.revoked is not None:
        fields["revoked"] = repr(family.revoked)
    if family.identity:
        fields["identity"] = family.identity
    return fields


def _family(family_id: str, fields: dict[str, str]) -> Family:
    revoked = fields.get("revoked")
    return Family(
        id=family_id,
        owner=fields["owner"],
        name=fields["name"],
        admin=fields["admin"] == "1",
        scope=fields["scope"],
        access_ttl=int(fields["access_ttl"]),
        created=float(fields["created"]),
        expires=float(fields["expires"]),
        revoked=float(revoked) if revoked else None,
        identity=fields.get("identity", ""),
    )
