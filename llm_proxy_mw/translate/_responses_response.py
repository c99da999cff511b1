"""A Chat completion (with the hub extensions) as the Response a Responses client expects.

The output items come in the order the model produced them: its reasoning (a ``reasoning``
item per thinking block: the thinking text as the summary, the signature as
``encrypted_content``; a redacted block is its data with no summary), the assistant
``message`` (``output_text``, ``refusal``), then a ``function_call`` per tool call.

Ids are derived from the provider's completion id, never random, so that the same answer
always gives the same Response, JSON or streamed (``_responses_stream.py`` names them
alike): ``resp_<id>``, and each output item ``rs_``, ``msg_`` or ``fc_<id>_<output index>``
(a function call's ``call_id`` is the tool call's id). Only a provider answer without an
id gets a random one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from llm_proxy_mw._usage import token_count
from llm_proxy_mw.translate._codec import Json, TokenUsage
from llm_proxy_mw.translate._mappings import responses_usage, usage_from_chat
from llm_proxy_mw.translate._responses_envelope import REDACTED, response_object

__all__ = ["chat_response_to_responses"]

#: A ``finish_reason`` that leaves the Response ``incomplete``, and the reason it shows.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}

#: The fields of a URL citation, and their types.
_CITATION = {"url": str, "title": str, "start_index": int, "end_index": int}


def _object(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def chat_response_to_responses(body: Json, request: Json) -> tuple[Json, TokenUsage]:
    """The Response for a Chat completion ``body``, echoing the client's Responses
    ``request``; and the provider's usage. An odd answer gives what can be read of it."""
    base = body.get("id")
    if not isinstance(base, str) or not base:
        base = uuid.uuid4().hex
    choices = body.get("choices")
    choice = _object(choices[0]) if isinstance(choices, list) and choices else {}
    message = _object(choice.get("message"))
    reason = choice.get("finish_reason")
    incomplete = _INCOMPLETE.get(reason) if isinstance(reason, str) else None
    output: list[Json] = []
    _add_reasoning(output, message, base)
    _add_message(output, message, base, incomplete is not None)
    _add_function_calls(output, message, base)
    usage = usage_from_chat(body.get("usage"))
    details = _object(_object(body.get("usage")).get("completion_tokens_details"))
    created = body.get("created")
    model = body.get("model")
    response = response_object(
        request,
        id=f"resp_{base}",
        created_at=created if type(created) is int else int(time.time()),
        model=model if isinstance(model, str) else str(request.get("model", "")),
        status="completed" if incomplete is None else "incomplete",
        output=output,
        usage=(
            responses_usage(usage, token_count(details.get("reasoning_tokens")))
            if isinstance(body.get("usage"), dict)
            else None
        ),
        incomplete_reason=incomplete,
    )
    return response, usage


def _add_reasoning(output: list[Json], message: Json, base: str) -> None:
    blocks = message.get("thinking_blocks")
    if not isinstance(blocks, list) or not blocks:
        text = message.get("reasoning_content")
        if not isinstance(text, str) or not text:
            return
        blocks = [{"type": "thinking", "thinking": text}]
    for block in blocks:
        block = _object(block)
        kind = block.get("type")
        if kind == "thinking" and isinstance(block.get("thinking"), str):
            summary = [{"type": "summary_text", "text": block["thinking"]}]
            signature = block.get("signature")
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str):
            summary, signature = [], REDACTED + block["data"]
        else:
            continue
        item: Json = {"id": f"rs_{base}_{len(output)}", "type": "reasoning", "summary": summary}
        if isinstance(signature, str):
            item["encrypted_content"] = signature
        output.append(item)


def _add_message(output: list[Json], message: Json, base: str, incomplete: bool) -> None:
    text, refusal = message.get("content"), message.get("refusal")
    content: list[Json] = []
    if isinstance(text, str) and (text or not (message.get("tool_calls") or refusal)):
        content.append({"type": "output_text", "text": text, "annotations": _annotations(message)})
    if isinstance(refusal, str) and refusal:
        content.append({"type": "refusal", "refusal": refusal})
    if content:
        output.append(
            {
                "id": f"msg_{base}_{len(output)}",
                "type": "message",
                "role": "assistant",
                "status": "incomplete" if incomplete else "completed",
                "content": content,
            }
        )


def _annotations(message: Json) -> list[Json]:
    """Chat's URL citations (from search models) in the Responses shape."""
    annotations = message.get("annotations")
    cited = []
    for annotation in annotations if isinstance(annotations, list) else []:
        citation = _object(_object(annotation).get("url_citation"))
        fields = {key: citation.get(key) for key in _CITATION}
        if all(isinstance(fields[key], kind) for key, kind in _CITATION.items()):
            cited.append({"type": "url_citation", **fields})
    return cited


def _add_function_calls(output: list[Json], message: Json, base: str) -> None:
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        call = _object(call)
        function = _object(call.get("function"))
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            continue
        arguments = function.get("arguments")
        output.append(
            {
                "id": f"fc_{base}_{len(output)}",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else "",
            }
        )
