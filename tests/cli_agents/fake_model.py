"""A scripted model behind the proxy for CLI agent sessions, speaking all three wire formats.

Each model request is answered from the conversation it carries: while that holds fewer tool
results than there are ``notes`` (files), the model calls the agent's file-reading tool on the
next one (Claude Code's ``Read``, Codex's ``exec_command`` running ``cat``); then it answers
``FINAL_ANSWER``. Distinct files, since an agent may refuse to read one file twice.
A request without tools (an agent's side request: a title, a summary) gets a short text.
Answers are SSE when the request asked for a stream and JSON otherwise, so a non-streaming
fallback shows in ``requests`` instead of failing the session. Tool-call arguments come in
two fragments, so a translated stream has to keep their order. ``cut_streams`` cuts that many
streams after their third event, as an upstream that fails mid-stream.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = ["FINAL_ANSWER", "FakeModel", "ModelRequest", "ToolCall", "answer"]

FINAL_ANSWER = "All three reads done."
SIDE_ANSWER = "Reading a file"
_USAGE_IN, _USAGE_OUT = 40, 8

Json = dict[str, Any]
Event = tuple[str | None, Json]  # (SSE event name, data)


@dataclass(frozen=True)
class ModelRequest:
    """One request the model received: its path, headers and parsed body."""

    path: str
    headers: dict[str, str]
    body: Json

    @property
    def streamed(self) -> bool:
        return self.body.get("stream") is True

    @property
    def tool_names(self) -> set[str]:
        tools = self.body.get("tools") or []
        return {t["function"]["name"] if "function" in t else t.get("name") for t in tools}

    @property
    def tool_results(self) -> list[str]:
        """The text of every tool result in the conversation, in the request's own format."""
        if self.path.endswith("/chat/completions"):
            return [str(m["content"]) for m in self.body["messages"] if m["role"] == "tool"]
        if self.path.endswith("/responses"):
            items = self.body["input"] if isinstance(self.body["input"], list) else []
            return [str(i["output"]) for i in items if i.get("type") == "function_call_output"]
        return [
            json.dumps(block.get("content"))
            for message in self.body["messages"]
            if message["role"] == "user" and isinstance(message["content"], list)
            for block in message["content"]
            if block.get("type") == "tool_result"
        ]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: Json

    def fragments(self) -> tuple[str, str]:
        """The arguments' JSON text, cut in two."""
        text = json.dumps(self.arguments)
        return text[: len(text) // 2], text[len(text) // 2 :]


class FakeModel:
    """The scripted model, an ASGI app; ``requests`` lists what it was sent, in order."""

    def __init__(self, *, notes: list[str]) -> None:
        self.notes = notes
        self.cut_streams = 0
        self.requests: list[ModelRequest] = []
        self._lock = threading.Lock()

    @property
    def model_requests(self) -> list[ModelRequest]:
        """The requests for a completion (``count_tokens`` and the like left out)."""
        with self._lock:
            return [r for r in self.requests if not r.path.endswith("/count_tokens")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] in ("http", "lifespan")
        if scope["type"] == "lifespan":
            return  # uvicorn's "auto" lifespan: none needed
        request = Request(scope, receive)
        path = request.url.path
        if (
            request.method != "POST"
            or path not in _RENDERERS
            and not path.endswith("/count_tokens")
        ):
            await Response(status_code=404)(scope, receive, send)
            return
        recorded = ModelRequest(path, dict(request.headers), await request.json())
        with self._lock:
            self.requests.append(recorded)
        if path.endswith("/count_tokens"):
            response: Response = JSONResponse({"input_tokens": _USAGE_IN})
        else:
            body, events = answer(recorded, self._next_call(recorded))
            if recorded.streamed and self.cut_streams > 0:
                self.cut_streams -= 1
                events = events[:3]
            response = _sse(events, path) if recorded.streamed else JSONResponse(body)
        await response(scope, receive, send)

    def _next_call(self, request: ModelRequest) -> ToolCall | None:
        """The tool call the model makes now, or None: it answers in text."""
        done = len(request.tool_results)
        if done >= len(self.notes):
            return None
        call_id, path = f"call_{done + 1}", self.notes[done]
        if "Read" in request.tool_names:
            return ToolCall(call_id, "Read", {"file_path": path})
        if "exec_command" in request.tool_names:
            return ToolCall(call_id, "exec_command", {"cmd": f"cat {path}"})
        return None


def _turn(request: ModelRequest) -> int:
    """The answer's number in the tool loop: an agent merges answers that share an id."""
    return len(request.tool_results) + 1


def _text(request: ModelRequest) -> str:
    return FINAL_ANSWER if request.tool_names else SIDE_ANSWER


def _sse(events: list[Event], path: str) -> Response:
    frames = [(f"event: {n}\n" if n else "") + f"data: {json.dumps(d)}\n\n" for n, d in events]
    if path.endswith("/chat/completions"):
        frames.append("data: [DONE]\n\n")
    return Response("".join(frames), media_type="text/event-stream")


def _messages(request: ModelRequest, call: ToolCall | None) -> tuple[Json, list[Event]]:
    """An Anthropic Messages answer: the JSON body, and the same as stream events."""
    usage = {"input_tokens": _USAGE_IN, "output_tokens": _USAGE_OUT}
    shell = {"id": f"msg_{_turn(request)}", "type": "message", "role": "assistant"}
    shell |= {"model": request.body["model"], "stop_sequence": None}
    if call is None:
        block: Json = {"type": "text", "text": _text(request)}
        opened: Json = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": block["text"]}]
    else:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        opened = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in call.fragments()]
    stop = "end_turn" if call is None else "tool_use"
    body = {**shell, "content": [block], "stop_reason": stop, "usage": usage}
    events: list[Event] = [
        (
            "message_start",
            {"message": {**shell, "content": [], "stop_reason": None, "usage": usage}},
        ),
        ("content_block_start", {"index": 0, "content_block": opened}),
        *[("content_block_delta", {"index": 0, "delta": delta}) for delta in deltas],
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage}),
        ("message_stop", {}),
    ]
    return body, [(name, {"type": name, **data}) for name, data in events]


def _chat(request: ModelRequest, call: ToolCall | None) -> tuple[Json, list[Event]]:
    """A Chat Completions answer, and its chunks (a usage chunk when the client asked)."""
    usage = {"prompt_tokens": _USAGE_IN, "completion_tokens": _USAGE_OUT}
    usage["total_tokens"] = _USAGE_IN + _USAGE_OUT
    shell = {"id": f"chatcmpl-{_turn(request)}", "created": 0, "model": request.body["model"]}
    if call is None:
        message: Json = {"role": "assistant", "content": _text(request)}
        deltas: list[Json] = [{"content": message["content"]}]
    else:
        function = {"name": call.name, "arguments": json.dumps(call.arguments)}
        message = {"role": "assistant", "content": None}
        message["tool_calls"] = [
            {"index": 0, "id": call.id, "type": "function", "function": function}
        ]
        opened = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {**function, "arguments": ""},
        }
        deltas = [{"tool_calls": [opened]}]
        deltas += [
            {"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in call.fragments()
        ]
    finish = "stop" if call is None else "tool_calls"
    choice = {"index": 0, "message": message, "finish_reason": finish}
    body = {**shell, "object": "chat.completion", "choices": [choice], "usage": usage}
    chunk = {**shell, "object": "chat.completion.chunk"}
    steps = [{"role": "assistant", "content": ""}, *deltas, {}]
    events: list[Event] = [
        (None, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        for delta in steps
    ]
    events[-1][1]["choices"][0]["finish_reason"] = finish
    if (request.body.get("stream_options") or {}).get("include_usage"):
        events.append((None, {**chunk, "choices": [], "usage": usage}))
    return body, events


def _responses(request: ModelRequest, call: ToolCall | None) -> tuple[Json, list[Event]]:
    """A Responses answer, and its event grammar from ``response.created`` on."""
    usage = {"input_tokens": _USAGE_IN, "output_tokens": _USAGE_OUT}
    usage |= {"total_tokens": _USAGE_IN + _USAGE_OUT}
    usage |= {"input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}}
    usage |= {"output_tokens_details": {"reasoning_tokens": 0}}
    turn = _turn(request)
    shell = {
        "id": f"resp_{turn}",
        "object": "response",
        "created_at": 0,
        "model": request.body["model"],
    }
    shell |= {"parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    where: Json = {"output_index": 0}
    if call is None:
        text = _text(request)
        part = {"type": "output_text", "text": text, "annotations": []}
        item: Json = {
            "id": f"msg_{turn}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
        }
        item["content"] = [part]
        at = {**where, "item_id": f"msg_{turn}", "content_index": 0}
        inner: list[Event] = [
            ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
            ("response.output_text.delta", {**at, "delta": text, "logprobs": []}),
            ("response.output_text.done", {**at, "text": text, "logprobs": []}),
            ("response.content_part.done", {**at, "part": part}),
        ]
        opened = {**item, "status": "in_progress", "content": []}
    else:
        arguments = json.dumps(call.arguments)
        item = {"id": f"fc_{turn}", "type": "function_call", "call_id": call.id, "name": call.name}
        item |= {"arguments": arguments, "status": "completed"}
        at = {**where, "item_id": f"fc_{turn}"}
        inner = [
            ("response.function_call_arguments.delta", {**at, "delta": f}) for f in call.fragments()
        ]
        inner.append(("response.function_call_arguments.done", {**at, "arguments": arguments}))
        opened = {**item, "status": "in_progress", "arguments": ""}
    body = {**shell, "status": "completed", "output": [item], "usage": usage}
    events: list[Event] = [
        ("response.created", {"response": {**shell, "status": "in_progress", "output": []}}),
        ("response.in_progress", {"response": {**shell, "status": "in_progress", "output": []}}),
        ("response.output_item.added", {**where, "item": opened}),
        *inner,
        ("response.output_item.done", {**where, "item": item}),
        ("response.completed", {"response": body}),
    ]
    return body, [
        (name, {"type": name, "sequence_number": n, **data})
        for n, (name, data) in enumerate(events)
    ]


_RENDERERS = {"/v1/messages": _messages, "/v1/chat/completions": _chat, "/v1/responses": _responses}


def answer(request: ModelRequest, call: ToolCall | None) -> tuple[Json, list[Event]]:
    """The model's answer to ``request`` in its format: the JSON body, and the stream events."""
    return _RENDERERS[request.path](request, call)
