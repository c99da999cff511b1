"""Properties of Chat Completions <-> Messages: a conversation sent Chat -> Messages -> Chat
keeps its text, tool calls, tool results and their ids, in order (only its grouping into
turns may change); token totals survive response translation both ways, cached tokens
counted once."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw._usage import MAX_TOKENS
from llm_proxy_mw.translate._chat_messages_request import (
    chat_request_to_messages,
    messages_request_to_chat,
)
from llm_proxy_mw.translate._chat_messages_response import (
    chat_response_to_messages,
    messages_response_to_chat,
)
from llm_proxy_mw.translate._codec import Target

texts = st.text(min_size=1, max_size=20)
names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
arguments = st.dictionaries(
    names, st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10), max_size=3
)
content = texts | st.lists(texts.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid Chat conversation: user first, each tool call answered by a tool message."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    serial = 0
    for _ in range(draw(st.integers(1, 4))):
        messages.extend(
            {"role": "user", "content": draw(content)} for _ in range(draw(st.integers(1, 2)))
        )
        assistant: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | texts)}
        calls = []
        for _ in range(draw(st.integers(0 if assistant["content"] else 1, 3))):
            serial += 1
            function = {"name": draw(names), "arguments": json.dumps(draw(arguments))}
            calls.append(
                {"id": f"call_{serial}_{draw(names)}", "type": "function", "function": function}
            )
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        messages.extend(
            {"role": "tool", "tool_call_id": c["id"], "content": draw(content)} for c in calls
        )
    return messages


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [part["text"] for part in value]


def _flat(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a conversation says, in order, whatever its turns' grouping."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        if m["role"] == "tool":
            out.append(("tool_result", m["tool_call_id"], _texts(m["content"])))
            continue
        out.extend((m["role"], text) for text in _texts(m["content"]))
        for call in m.get("tool_calls", []):
            function = call["function"]
            out.append(
                ("tool_call", call["id"], function["name"], json.loads(function["arguments"]))
            )
    return out


@settings(max_examples=100, deadline=None)
@given(conversations())
def test_chat_to_messages_to_chat_keeps_the_conversation(messages: list[dict[str, Any]]) -> None:
    anthropic = chat_request_to_messages({"model": "a", "messages": messages}, Target("claude"))
    roles = [turn["role"] for turn in anthropic["messages"]]
    assert roles[0] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles
    back = messages_request_to_chat(anthropic, Target("gpt"))
    assert _flat(back["messages"]) == _flat(messages)


counts = st.integers(0, MAX_TOKENS // 4)


@given(counts, counts, counts, counts)
def test_anthropic_usage_totals_survive_both_ways(
    fresh: int, output: int, read: int, written: int
) -> None:
    usage = {
        "input_tokens": fresh,
        "output_tokens": output,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
    }
    message = {"type": "message", "content": [], "stop_reason": "end_turn", "usage": usage}
    chat, counted = messages_response_to_chat(message)
    assert chat["usage"]["prompt_tokens"] == fresh + read + written == counted.prompt_tokens
    assert chat["usage"]["prompt_tokens_details"] == {
        "cached_tokens": read,
        "cache_write_tokens": written,
    }
    assert chat["usage"]["total_tokens"] == fresh + read + written + output
    again, recounted = chat_response_to_messages(chat)
    assert again["usage"] == usage
    assert recounted.prompt_tokens + recounted.completion_tokens == chat["usage"]["total_tokens"]


@given(counts, counts, st.data())
def test_chat_usage_totals_survive_both_ways(
    prompt: int, completion: int, data: st.DataObject
) -> None:
    cached = data.draw(st.integers(0, prompt))
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    completion_body = {
        "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    message, _ = chat_response_to_messages(completion_body)
    anthropic = message["usage"]
    assert anthropic["input_tokens"] + anthropic["cache_read_input_tokens"] == prompt
    assert anthropic["cache_read_input_tokens"] == cached
    assert anthropic["output_tokens"] == completion
    chat, _ = messages_response_to_chat(message)
    details = {"cached_tokens": cached, "cache_write_tokens": 0}
    assert chat["usage"] == {**usage, "prompt_tokens_details": details}
