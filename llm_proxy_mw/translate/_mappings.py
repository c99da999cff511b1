"""The small tables every translation between OpenAI's APIs and Anthropic's shares: why a
generation stopped, and how many tokens it used."""

from __future__ import annotations

from typing import Any

from llm_proxy_mw._usage import token_count
from llm_proxy_mw.translate._codec import Json, TokenUsage

__all__ = [
    "FINISH_TO_STOP",
    "STOP_TO_FINISH",
    "anthropic_usage",
    "chat_usage",
    "responses_usage",
    "usage_from_anthropic",
    "usage_from_chat",
]

#: Anthropic's ``stop_reason`` as a Chat Completions ``finish_reason``.
STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: A Chat Completions ``finish_reason`` as Anthropic's ``stop_reason``.
FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _object(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def usage_from_anthropic(usage: Any) -> TokenUsage:
    """Anthropic's usage (counted outside ``input_tokens``: cache reads and writes) as
    OpenAI counts it (inside ``prompt_tokens``). Numbers that are no token count are 0."""
    u = _object(usage)
    cached = token_count(u.get("cache_read_input_tokens"))
    created = token_count(u.get("cache_creation_input_tokens"))
    return TokenUsage(
        prompt_tokens=token_count(u.get("input_tokens")) + cached + created,
        completion_tokens=token_count(u.get("output_tokens")),
        cached_tokens=cached,
        cache_creation_tokens=created,
    )


def usage_from_chat(usage: Any) -> TokenUsage:
    """Chat Completions usage (cache reads, ``cached_tokens``, and writes,
    ``cache_write_tokens``, inside ``prompt_tokens``; ``reasoning_tokens`` inside
    ``completion_tokens``)."""
    u = _object(usage)
    details = _object(u.get("prompt_tokens_details"))
    prompt = token_count(u.get("prompt_tokens"))
    cached = min(token_count(details.get("cached_tokens")), prompt)
    completion = token_count(u.get("completion_tokens"))
    reasoning = token_count(_object(u.get("completion_tokens_details")).get("reasoning_tokens"))
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_creation_tokens=min(token_count(details.get("cache_write_tokens")), prompt - cached),
        reasoning_tokens=min(reasoning, completion),
    )


def anthropic_usage(usage: TokenUsage) -> Json:
    """``usage`` in Anthropic's shape: cache reads and writes taken out of the input."""
    fresh = usage.prompt_tokens - usage.cached_tokens - usage.cache_creation_tokens
    return {
        "input_tokens": max(fresh, 0),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
    }


def chat_usage(usage: TokenUsage) -> Json:
    """``usage`` in Chat Completions' shape."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_creation_tokens,
        },
    }


def responses_usage(usage: TokenUsage, reasoning_tokens: int = 0) -> Json:
    """``usage`` in the Responses API's shape."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_creation_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
