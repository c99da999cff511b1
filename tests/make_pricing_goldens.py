"""Writes the pricing goldens, ``tests/goldens_pricing/<api>[_sse].json``: run it from the
checkout (``python tests/make_pricing_goldens.py``) after changing a case below.

Each case is a response as each API's provider sends it (JSON, or its SSE stream), the
``context.Usage`` read out of it, the price it is charged at (USD per million tokens, as
``[pricing]`` would set it) and its cost, computed here by hand in ``Fraction``s: the fresh
input (``prompt - cache_read - cache_write``) at the input price, cache reads and writes at
theirs, the whole completion (reasoning included) at the output price. The same request is
recorded as JSON and as a stream, with the same usage, under the same ``name``. The costs of
the prices that came from genai-prices' table are checked against its own ``calc_price``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "goldens_pricing"
OPENAI = {"kind": "openai", "base_url": "https://api.openai.com/v1"}
ANTHROPIC = {"kind": "anthropic", "base_url": "https://api.anthropic.com/v1"}
LOCAL = {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1"}

#: model: (provider, input, output, cache_read, cache_write); no input: no price (null cost).
RATES: dict[str, tuple[dict[str, str], str | None, str, str, str | None]] = {
    "gpt-4o": (OPENAI, "2.5", "10", "1.25", None),
    "gpt-4o-mini": (OPENAI, "0.15", "0.6", "0.075", None),
    "o3": (OPENAI, "2", "8", "0.5", None),
    "gpt-5": (OPENAI, "1.25", "10", "0.125", None),
    "gpt-4.1": (OPENAI, "2", "8", "0.5", None),
    "claude-sonnet-4-5": (ANTHROPIC, "3", "15", "0.3", "3.75"),
    "claude-opus-4-1": (ANTHROPIC, "15", "75", "1.5", "18.75"),
    "claude-3-5-haiku-latest": (ANTHROPIC, "0.8", "4", "0.08", "1"),
    "local-llama": (LOCAL, "0.2", "0.4", "0.05", "0.25"),
    "local-mystery": (LOCAL, None, "", "", None),
}


def price_of(rates: tuple[str | None, ...]) -> dict[str, str] | None:
    keys = ("input", "output", "cache_read", "cache_write")
    if rates[0] is None:
        return None
    return {k: v for k, v in zip(keys, rates, strict=True) if v is not None}


MODELS = {model: (provider, price_of(tuple(rates))) for model, (provider, *rates) in RATES.items()}
TABLE_MODELS = [m for m, (p, _) in MODELS.items() if p is not LOCAL]

#: (prompt, cache_read, cache_write, completion, reasoning): OpenAI's counts.
USAGES = [
    (12, 0, 0, 5, 0),
    (1_523, 0, 0, 287, 0),
    (2_048, 1_024, 0, 64, 0),
    (9_876, 8_192, 0, 1_200, 0),
    (5_000, 0, 4_000, 300, 0),
    (15_360, 10_240, 4_096, 512, 0),
    (800, 0, 0, 3_200, 2_944),
    (4_321, 2_048, 0, 7_777, 6_400),
    (131_072, 65_536, 32_768, 16_384, 8_192),
    (199_999, 150_000, 0, 4_000, 0),
    (250_000, 0, 0, 1_000, 0),
    (1, 0, 0, 1, 0),
    (0, 0, 0, 0, 0),
    (3_333, 3_333, 0, 17, 0),
    (777, 0, 777, 99, 33),
    (64_000, 0, 0, 128_000, 100_000),
    (42, 0, 0, 0, 0),
    (10_000, 9_000, 1_000, 2_500, 500),
]


def hand_cost(usage: tuple[int, int, int, int, int], price: dict[str, str]) -> str:
    prompt, read, write, completion, _ = usage
    rate = {k: Fraction(v) for k, v in price.items()}
    fresh = prompt - read - write
    if "cache_read" not in rate:
        fresh, read = fresh + read, 0
    if "cache_write" not in rate:
        fresh, write = fresh + write, 0
    total = (
        fresh * rate["input"]
        + read * rate.get("cache_read", 0)
        + write * rate.get("cache_write", 0)
        + completion * rate["output"]
    ) / 1_000_000
    exact = Decimal(total.numerator) / Decimal(total.denominator)
    assert Fraction(exact) == total  # a terminating decimal: nothing was rounded
    return str(exact)


def chat_usage(u: tuple[int, int, int, int, int]) -> dict[str, Any]:
    return {"prompt_tokens": u[0], "completion_tokens": u[3], "total_tokens": u[0] + u[3]} | {
        "prompt_tokens_details": {"cached_tokens": u[1], "cache_write_tokens": u[2]},
        "completion_tokens_details": {"reasoning_tokens": u[4]},
    }


def chat(model: str, u: tuple[int, int, int, int, int], n: int) -> tuple[Any, str]:
    base = {"id": f"chatcmpl-{n:04d}", "created": 1764700000 + n, "model": model}
    body = base | {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there."},
                "finish_reason": "stop",
            }
        ],
        "usage": chat_usage(u),
    }
    chunk = base | {"object": "chat.completion.chunk"}
    events = [
        chunk | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        chunk | {"choices": [{"index": 0, "delta": {"content": "Hello there."}}]},
        chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        chunk | {"choices": [], "usage": chat_usage(u)},
    ]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return body, stream


def responses_usage(u: tuple[int, int, int, int, int]) -> dict[str, Any]:
    return {
        "input_tokens": u[0],
        "input_tokens_details": {"cached_tokens": u[1], "cache_write_tokens": u[2]},
        "output_tokens": u[3],
        "output_tokens_details": {"reasoning_tokens": u[4]},
        "total_tokens": u[0] + u[3],
    }


def responses(model: str, u: tuple[int, int, int, int, int], n: int) -> tuple[Any, str]:
    message = {
        "type": "message",
        "id": f"msg_{n:04d}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello there.", "annotations": []}],
    }
    body = {
        "id": f"resp_{n:04d}",
        "object": "response",
        "created_at": 1764700000 + n,
        "status": "completed",
        "model": model,
        "output": [message],
        "usage": responses_usage(u),
    }
    started = body | {"status": "in_progress", "output": [], "usage": None}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": started},
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": message["id"],
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello there.",
        },
        {"type": "response.completed", "sequence_number": 2, "response": body},
    ]
    stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return body, stream


def messages(model: str, u: tuple[int, int, int, int, int], n: int) -> tuple[Any, str]:
    # Anthropic counts cache reads and writes outside input_tokens, and no reasoning apart.
    usage = {
        "input_tokens": u[0] - u[1] - u[2],
        "cache_creation_input_tokens": u[2],
        "cache_read_input_tokens": u[1],
        "output_tokens": u[3],
    }
    body = {
        "id": f"msg_{n:04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    start = body | {"content": [], "stop_reason": None, "usage": usage | {"output_tokens": 1}}
    events = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello there."},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": u[3]},
        },
        {"type": "message_stop"},
    ]
    stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return body, stream


def check_with_genai_prices(case: dict[str, Any]) -> None:
    from genai_prices import Usage, calc_price

    u = case["usage"]
    usage = Usage(
        input_tokens=u["prompt_tokens"],
        cache_read_tokens=u["cache_read_tokens"],
        cache_write_tokens=u["cache_write_tokens"],
        output_tokens=u["completion_tokens"],
    )
    provider = case["provider"]["kind"]
    total = calc_price(usage, case["model"], provider_id=provider).total_price
    assert total == Decimal(case["cost_usd"]), (case["name"], total, case["cost_usd"])


def main() -> None:
    writers = {"chat": chat, "responses": responses, "messages": messages}
    models = list(MODELS)
    n = 0
    for api, write in writers.items():
        json_cases, sse_cases = [], []
        for i, u in enumerate(USAGES):
            model = models[(i + len(api)) % len(models)]
            if api == "messages":
                u = (*u[:4], 0)  # Messages reports no reasoning tokens apart
            provider, price = MODELS[model]
            n += 1
            body, stream = write(model, u, n)
            keys = ("prompt", "cache_read", "cache_write", "completion", "reasoning")
            fields = [f"{k}_tokens" for k in keys]
            case = {
                "name": f"{api}-{i:02d}-{model}",
                "api": api,
                "provider": provider,
                "model": model,
                "usage": dict(zip(fields, u, strict=True)),
                "price": price,
                "cost_usd": None if price is None else hand_cost(u, price),
            }
            # A long-context request past a tier of the table is priced here as configured.
            if model in TABLE_MODELS and price is not None and u[0] <= 200_000:
                check_with_genai_prices(case)
            json_cases.append(case | {"body": body})
            sse_cases.append(case | {"events": stream})
        OUT.mkdir(exist_ok=True)
        for suffix, cases in (("", json_cases), ("_sse", sse_cases)):
            text = json.dumps(cases, indent=1) + "\n"
            (OUT / f"{api}{suffix}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
