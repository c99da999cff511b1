"""The echo provider's OpenAI Responses API: JSON, and SSE with the full event grammar.

A stream goes ``response.created``, ``response.in_progress``, ``response.output_item.added``,
then for a message ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``, or for a function call
``response.function_call_arguments.delta``... and ``.done``, then
``response.output_item.done`` and ``response.completed`` (``response.incomplete`` when cut
by ``max_output_tokens``), every event numbered by ``sequence_number``. Stateless: the
Response says ``store: false``.
"""

from __future__ import annotations

import time
from typing import Any

from llm_proxy_mw.translate._codec import TokenUsage
from llm_proxy_mw.translate._mappings import responses_usage
from llm_proxy_mw.translate._responses_envelope import ResponseStatus, response_object
from llm_proxy_mw.transports._echo_answer import EchoAnswer
from llm_proxy_mw.transports._echo_wire import JSON_HEADERS, SSE_HEADERS, Rendered, dumps

__all__ = ["responses"]


def _item(answer: EchoAnswer, status: ResponseStatus) -> dict[str, Any]:
    """The one output item: the function call, or the message."""
    call = answer.tool_call
    if call is not None:
        return {
            "id": f"fc_{answer.id}",
            "type": "function_call",
            "status": status,
            "call_id": f"call_{answer.id}",
            "name": call.name,
            "arguments": call.arguments,
        }
    part = {"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}
    return {
        "id": f"msg_{answer.id}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def responses(answer: EchoAnswer, request: dict[str, Any]) -> Rendered:
    status: ResponseStatus = "incomplete" if answer.truncated else "completed"
    item = _item(answer, status)
    shell: dict[str, Any] = {
        "id": f"resp_{answer.id}",
        "created_at": int(time.time()),
        "model": answer.model,
    }
    done = response_object(
        request,
        **shell,
        status=status,
        output=[item],
        usage=responses_usage(TokenUsage(answer.prompt_tokens, answer.completion_tokens)),
        incomplete_reason="max_output_tokens" if answer.truncated else None,
    )
    if not answer.stream:
        return JSON_HEADERS, [dumps(done)]
    started = response_object(request, **shell, status="in_progress", output=[])
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        *_item_events(answer, item),
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": f"response.{status}", "response": done},
    ]
    return SSE_HEADERS, [_sse(number, event) for number, event in enumerate(events)]


def _item_events(answer: EchoAnswer, item: dict[str, Any]) -> list[dict[str, Any]]:
    """From the item's ``output_item.added`` up to its ``output_item.done``, exclusive."""
    at = {"item_id": item["id"], "output_index": 0}
    if answer.tool_call is not None:
        added = {**item, "status": "in_progress", "arguments": ""}
        return [
            {"type": "response.output_item.added", "output_index": 0, "item": added},
            *(
                {"type": "response.function_call_arguments.delta", **at, "delta": piece}
                for piece in answer.pieces
            ),
            {"type": "response.function_call_arguments.done", **at, "arguments": item["arguments"]},
        ]
    part = item["content"][0]
    at["content_index"] = 0
    added = {**item, "status": "in_progress", "content": []}
    return [
        {"type": "response.output_item.added", "output_index": 0, "item": added},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        *(
            {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
            for piece in answer.pieces
        ),
        {"type": "response.output_text.done", **at, "text": answer.text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
    ]


def _sse(number: int, event: dict[str, Any]) -> bytes:
    event["sequence_number"] = number
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + dumps(event) + b"\n\n"
