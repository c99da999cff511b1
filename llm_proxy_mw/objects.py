"""Objects remember their provider: files, batches, uploads, responses, vector stores,
fine-tuning jobs and message batches live at the provider that created them.

When a provider answers a create (``POST /v1/files``, ``/v1/batches``, ``/v1/responses``,
``/v1/messages/batches``, ...: ``CREATE_PATHS``) with a JSON object carrying an ``id``, the
proxy records ``id -> provider`` in the store (``ObjectOwners``: SQLite, or Redis shared by
replicas; 30 days by default). A later request naming that id, in its path
(``/v1/files/{id}/content``, ``/v1/batches/{id}/cancel``) or in a body field
(``previous_response_id``, a batch's ``input_file_id``: ``BODY_ID_FIELDS``), goes to that
provider. Only non-streamed JSON answers to those endpoints are read, up to
``max_answer_bytes``, while they pass; the record is written once the answer was sent,
never delaying or failing it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from starlette.types import Message, Send

from llm_proxy_mw._json_body import is_json_type
from llm_proxy_mw.errors import StoreError

if TYPE_CHECKING:
    from llm_proxy_mw._plan import Plan
    from llm_proxy_mw.apis import Api
    from llm_proxy_mw.context import RequestContext
    from llm_proxy_mw.routing import Router

__all__ = [
    "BODY_ID_FIELDS",
    "AnswerReader",
    "CREATE_PATHS",
    "DEFAULT_OBJECT_TTL",
    "ObjectOwners",
    "ObjectRoutes",
]

logger = logging.getLogger("llm_proxy_mw")

#: Seconds an object's provider is remembered (``[store] object_ttl_days``).
DEFAULT_OBJECT_TTL = 30 * 86_400

#: Collections of objects that live at a provider, below ``/v1/``.
_COLLECTIONS = (
    "assistants",
    "batches",
    "containers",
    "conversations",
    "evals",
    "files",
    "fine_tuning/jobs",
    "messages/batches",
    "responses",
    "threads",
    "uploads",
    "vector_stores",
)
#: The paths whose ``POST`` creates an object: the collections, and completing an upload
#: (its answer is the new file).
CREATE_PATHS = frozenset(f"/v1/{c}" for c in _COLLECTIONS)
_UPLOAD_COMPLETE = re.compile(r"/v1/uploads/[^/]+/complete")
#: ``/v1/<collection>/<id>`` and anything below: the id is the first segment after it.
#: The prefixes first: most requests (chat, messages) are ruled out without the regex.
_OBJECT_PREFIXES = tuple(f"/v1/{c}/" for c in _COLLECTIONS)
_OBJECT_PATH = re.compile("/v1/(?:" + "|".join(_COLLECTIONS) + ")/([^/]+)")
#: Body fields naming an object that another request created, per path.
BODY_ID_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/responses": ("previous_response_id",),
    "/v1/batches": ("input_file_id",),
    "/v1/fine_tuning/jobs": ("training_file", "validation_file"),
}
_NO_IDS: tuple[str, ...] = ()


class ObjectOwners(Protocol):
    """Object id -> the name of the provider that created it, each kept for a TTL.

    Both methods raise ``StoreError`` when the backend fails.
    """

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def owner(self, object_id: str) -> str | None: ...

    async def record(self, object_id: str, provider: str) -> None: ...


class ObjectRoutes:
    """Reads the object ids a request names, finds their provider, and records the ids of
    objects that providers create. ``start`` and ``stop`` it with the proxy."""

    def __init__(self, owners: ObjectOwners, *, max_answer_bytes: int = 1024 * 1024) -> None:
        self.owners = owners
        self.max_answer_bytes = max_answer_bytes

    async def start(self) -> None:
        await self.owners.open()

    async def stop(self) -> None:
        await self.owners.close()

    def concerns(self, route_path: str) -> bool:
        """Whether the endpoint creates, names or lists objects."""
        return route_path in CREATE_PATHS or route_path.startswith(_OBJECT_PREFIXES)

    def ids(self, ctx: RequestContext) -> tuple[str, ...]:
        """The object ids the request names: the one in its path first, then body fields."""
        path = ctx.route_path
        found = _OBJECT_PATH.match(path) if path.startswith(_OBJECT_PREFIXES) else None
        fields = BODY_ID_FIELDS.get(path)
        if fields is None or not ctx.body_is_json:
            return _NO_IDS if found is None else (found[1],)
        body = ctx.json() or {}
        named = tuple(v for f in fields if isinstance(v := body.get(f), str) and v)
        return named if found is None else (found[1], *named)

    async def owner(self, ids: tuple[str, ...]) -> str | None:
        """The provider of the first id the store knows; ``None`` when it knows none, or
        fails (logged): the request is then routed as if the ids were new."""
        try:
            for object_id in ids:
                if (provider := await self.owners.owner(object_id)) is not None:
                    return provider
        except StoreError as exc:
            logger.warning("llm_proxy_mw: cannot read which provider owns an object: %s", exc)
        return None

    async def plan(self, router: Router, ctx: RequestContext, api: Api | None) -> Plan | None:
        """To the owner of the first object the request names that the store knows; else,
        without a model, to the first provider keeping objects; else ``None`` (by model)."""
        ids = self.ids(ctx)
        if ids and (owner := await self.owner(ids)) is not None:
            plan = router.single(owner, ctx.wire_format, api)
            if plan is not None:  # else the owner left the config: as if it were unknown
                return plan
        return router.objects_plan(ctx.wire_format) if ctx.model is None else None

    def records(self, route_path: str) -> bool:
        """Whether a ``POST`` to ``route_path`` creates an object whose id is recorded."""
        if route_path in CREATE_PATHS:
            return True
        return route_path.startswith("/v1/uploads/") and bool(
            _UPLOAD_COMPLETE.fullmatch(route_path)
        )

    def answer_reader(self, send: Send, ctx: RequestContext) -> AnswerReader:
        """A ``send`` that keeps the JSON answer to a create, and records who owns the object
        before the answer's last bytes go out (``record``)."""
        return AnswerReader(send, self.max_answer_bytes, self, ctx)

    async def record(self, answer: AnswerReader, provider: str) -> None:
        """Record that ``provider`` owns the object ``answer`` created, if it created one.

        Called before the answer's last bytes go out, so that a client using the object
        the moment it has the answer finds it where it is. A store failure is logged, never
        raised: the object was created, and the request succeeded.
        """
        object_id = answer.created_id()
        if object_id is None:
            return
        try:
            await self.owners.record(object_id, provider)
        except StoreError as exc:
            logger.warning("llm_proxy_mw: cannot record that %s owns an object: %s", provider, exc)


class AnswerReader:
    """Passes every message on at once, keeping references to the body chunks of a 2xx
    JSON answer, up to ``limit`` bytes (past it, none: the answer is no object to record).
    Its last chunk waits for ``routes`` to record the object's owner, the provider of
    ``ctx``'s current attempt."""

    __slots__ = ("_send", "_limit", "_routes", "_ctx", "_chunks", "_size", "_keep", "_complete")

    def __init__(self, send: Send, limit: int, routes: ObjectRoutes, ctx: RequestContext) -> None:
        self._send = send
        self._limit = limit
        self._routes = routes
        self._ctx = ctx
        self._chunks: list[bytes] = []
        self._size = 0
        self._keep = False
        self._complete = False

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self._keep = 200 <= message["status"] < 300 and _is_json(message["headers"])
        elif self._keep:
            chunk: bytes = message.get("body", b"")
            self._size += len(chunk)
            if self._size > self._limit:
                self._keep = False
                self._chunks.clear()
            else:
                self._chunks.append(chunk)
                if not message.get("more_body", False):
                    self._complete = True
                    return self._recorded_then_sent(message)
        return self._send(message)

    async def _recorded_then_sent(self, message: Message) -> None:
        provider = self._ctx.provider
        if provider is not None:
            await self._routes.record(self, provider)
        await self._send(message)

    def created_id(self) -> str | None:
        """The ``id`` of the whole JSON object answered, if that is what was sent."""
        if not self._complete:
            return None
        try:
            created = json.loads(b"".join(self._chunks))
        except ValueError:  # not JSON after all: nothing to record
            return None
        object_id = created.get("id") if isinstance(created, dict) else None
        return object_id if isinstance(object_id, str) and object_id else None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"content-type" and is_json_type(value) for name, value in headers)
