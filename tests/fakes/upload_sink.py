"""A provider's upload endpoints for the upload tests: it counts each body's bytes as they
arrive and never holds a large one, so the test process stays small while hundreds of
megabytes go through the proxy.

Served with ``UvicornServer(sink, lifespan="off")``. It answers ``/v1/files`` with a file
object, the audio endpoints with ``{"text": <its name>}``, and anything else with
``{"provider": <its name>}``; ``status`` scripts the status of every answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

__all__ = ["SinkRequest", "UploadSink"]


@dataclass
class SinkRequest:
    path: str
    headers: dict[str, str]
    size: int
    #: The body's first ``keep_bytes`` bytes.
    head: bytes
    #: Whether the body arrived whole (its client did not break it off).
    complete: bool


class UploadSink:
    """An ASGI app standing for an upload endpoint of the provider named ``name``."""

    def __init__(self, name: str, *, status: int = 200, keep_bytes: int = 64 * 1024) -> None:
        self.name = name
        self.status = status
        self.keep_bytes = keep_bytes
        self.requests: list[SinkRequest] = []
        #: Bytes of the body arriving now, updated as each chunk arrives.
        self.receiving = 0
        self._changed = threading.Condition()

    def wait(self, predicate_bytes: int, timeout: float = 10.0) -> bool:
        """Whether the body arriving now reached ``predicate_bytes`` within ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.receiving >= predicate_bytes, timeout)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[SinkRequest]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        size, head, complete = 0, bytearray(), True
        with self._changed:
            self.receiving = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                complete = False
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if len(head) < self.keep_bytes:
                head += chunk[: self.keep_bytes - len(head)]
            with self._changed:
                self.receiving = size
                self._changed.notify_all()
            if not message.get("more_body", False):
                break
        with self._changed:
            self.requests.append(SinkRequest(scope["path"], headers, size, bytes(head), complete))
            self._changed.notify_all()
        if not complete:
            return
        body = json.dumps(self._answer(scope["path"], size)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _answer(self, path: str, size: int) -> dict[str, object]:
        if self.status >= 400:
            return {"error": {"message": f"{self.name} failed", "type": "server_error"}}
        if path.endswith("/files"):
            return {
                "id": f"file-{self.name}-{len(self.requests)}",
                "object": "file",
                "bytes": size,
                "created_at": 0,
                "filename": "upload.bin",
                "purpose": "batch",
                "status": "processed",
            }
        if "/audio/" in path:
            return {"text": self.name}
        return {"provider": self.name}
