"""A fake OpenAI provider that keeps objects: files, batches and responses, with ids that
name it, so a test can tell which provider holds what. It answers 404 for an object it does
not hold, as a real provider does for another's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.e2e_helpers import provider_toml
from tests.fakes.servers import UvicornServer

__all__ = ["ObjectProvider", "TwoProviders", "two_providers"]


class ObjectProvider:
    """``app`` serves ``/v1/files``, ``/v1/batches``, ``/v1/responses`` and
    ``/v1/chat/completions``; ``seen`` lists every ``(method, path)`` it was sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, str]] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/files", self._files, methods=["GET", "POST"]),
                Route("/v1/files/{id}", self._file, methods=["GET", "DELETE"]),
                Route("/v1/files/{id}/content", self._content),
                Route("/v1/batches", self._create_batch, methods=["POST"]),
                Route("/v1/batches/{id}", self._batch),
                Route("/v1/batches/{id}/cancel", self._cancel, methods=["POST"]),
                Route("/v1/responses", self._create_response, methods=["POST"]),
                Route("/v1/responses/{id}", self._response),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.name}-{next(self._ids)}"

    def _note(self, request: Request) -> None:
        self.seen.append((request.method, request.url.path))

    async def _files(self, request: Request) -> Response:
        self._note(request)
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": list(self.files.values())})
        async with request.form() as form:
            upload, purpose = form["file"], form["purpose"]
            assert not isinstance(upload, str)
            content = await upload.read()
        file_id = self._new_id("file")
        self.contents[file_id] = content
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": 1,
            "filename": upload.filename,
            "purpose": purpose,
            "status": "processed",
        }
        return JSONResponse(self.files[file_id])

    async def _file(self, request: Request) -> Response:
        self._note(request)
        file_id = request.path_params["id"]
        if file_id not in self.files:
            return _not_found(file_id)
        if request.method == "DELETE":
            del self.files[file_id]
            return JSONResponse({"id": file_id, "object": "file", "deleted": True})
        return JSONResponse(self.files[file_id])

    async def _content(self, request: Request) -> Response:
        self._note(request)
        file_id = request.path_params["id"]
        if file_id not in self.contents:
            return _not_found(file_id)
        return Response(self.contents[file_id], media_type="application/octet-stream")

    async def _create_batch(self, request: Request) -> Response:
        self._note(request)
        body = await request.json()
        if body["input_file_id"] not in self.files:
            return _not_found(body["input_file_id"])
        batch_id = self._new_id("batch")
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "completion_window": body["completion_window"],
            "input_file_id": body["input_file_id"],
            "created_at": 1,
            "status": "validating",
        }
        return JSONResponse(self.batches[batch_id])

    async def _batch(self, request: Request) -> Response:
        self._note(request)
        batch = self.batches.get(request.path_params["id"])
        return _not_found(request.path_params["id"]) if batch is None else JSONResponse(batch)

    async def _cancel(self, request: Request) -> Response:
        self._note(request)
        batch = self.batches.get(request.path_params["id"])
        if batch is None:
            return _not_found(request.path_params["id"])
        batch["status"] = "cancelling"
        return JSONResponse(batch)

    async def _create_response(self, request: Request) -> Response:
        self._note(request)
        body = await request.json()
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.responses:
            return _not_found(previous)
        response_id = self._new_id("resp")
        self.responses[response_id] = {
            "id": response_id,
            "object": "response",
            "created_at": 1,
            "model": body["model"],
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": f"msg-{response_id}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": f"{self.name} answers", "annotations": []}
                    ],
                }
            ],
            "previous_response_id": previous,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        return JSONResponse(self.responses[response_id])

    async def _response(self, request: Request) -> Response:
        self._note(request)
        found = self.responses.get(request.path_params["id"])
        return _not_found(request.path_params["id"]) if found is None else JSONResponse(found)

    async def _chat(self, request: Request) -> Response:
        self._note(request)
        body = await request.json()
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"{self.name} answers"},
                    }
                ],
            }
        )


def _not_found(object_id: str) -> Response:
    message = f"No such object: {object_id}"
    error = {"message": message, "type": "invalid_request_error", "code": "not_found"}
    return JSONResponse({"error": error}, status_code=404)


@dataclass
class TwoProviders:
    """Two ``openai`` providers, ``first`` (serving ``gpt-first``) and ``second``
    (``gpt-second``), each an ``ObjectProvider`` on a loopback port of its own."""

    first: ObjectProvider
    second: ObjectProvider
    urls: tuple[str, str]

    def tables(self) -> list[str]:
        """Their ``[providers.<name>]`` tables, the provider key from ``FAKE_OPENAI_KEY``."""
        return [
            provider_toml(
                fake.name,
                kind="openai",
                base_url=f"{url}/v1",
                key_var="FAKE_OPENAI_KEY",
                models=[f"gpt-{fake.name}"],
            )  # fmt: skip
            for fake, url in zip((self.first, self.second), self.urls, strict=True)
        ]

    def forget(self) -> TwoProviders:
        """Clear what both were sent; the objects they hold stay."""
        self.first.seen.clear()
        self.second.seen.clear()
        return self


@contextmanager
def two_providers() -> Iterator[TwoProviders]:
    first, second = ObjectProvider("first"), ObjectProvider("second")
    with UvicornServer(first.app) as one, UvicornServer(second.app) as two:
        yield TwoProviders(first, second, (one.url, two.url))
