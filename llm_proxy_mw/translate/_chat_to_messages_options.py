"""The options of a Chat Completions request as Messages options: tools, ``tool_choice``,
``response_format`` and ``reasoning_effort``."""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError
from llm_proxy_mw.translate._codec import Json
from llm_proxy_mw.translate._fields import object_at, refuse, str_at

__all__ = ["REASONING_BUDGETS", "add_thinking", "output_format", "tool_choice", "tool_definition"]

_PROVIDER = "Anthropic's Messages API"

#: ``reasoning_effort`` as a thinking budget, in tokens (Anthropic's least is 1024).
REASONING_BUDGETS = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
    "max": 65536,
}
_MIN_BUDGET = 1024

_TOOL_CHOICES: dict[str, Json] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}


def add_thinking(out: Json, effort: Any, *, user_limit: bool) -> None:
    """Ask for thinking with ``effort``'s budget, which must stay below ``max_tokens``: a
    client's own limit counts reasoning too, so the budget takes at most half of it; without
    one, the budget is added to the default."""
    if effort == "none":
        out["thinking"] = {"type": "disabled"}
        return
    budget = REASONING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        names = ", ".join(["none", *REASONING_BUDGETS])
        raise InvalidRequestError(
            f"reasoning_effort: must be one of {names}", param="reasoning_effort"
        )
    if out.get("tool_choice", {}).get("type") in ("any", "tool"):
        raise UntranslatableError(
            "tool_choice: Anthropic cannot force a tool while thinking (reasoning_effort)",
            param="tool_choice",
        )
    if user_limit:
        budget = min(budget, out["max_tokens"] // 2)
        if budget < _MIN_BUDGET:
            raise UntranslatableError(
                f"reasoning_effort: thinking on Anthropic needs max_completion_tokens of at "
                f"least {2 * _MIN_BUDGET}",
                param="reasoning_effort",
            )
    else:
        out["max_tokens"] += budget
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def tool_definition(value: Any, where: str) -> Json:
    tool = object_at(value, where)
    if tool.get("type", "function") != "function":
        raise refuse(f"{where}.type", _PROVIDER)
    function = object_at(tool.get("function"), where, ".function")
    parameters = function.get("parameters")
    out: Json = {
        "name": str_at(function.get("name"), where, ".function.name"),
        "input_schema": (
            {"type": "object", "properties": {}}
            if parameters is None
            else object_at(parameters, where, ".function.parameters")
        ),
    }
    description = function.get("description")
    if description is not None:
        out["description"] = str_at(description, where, ".function.description")
    strict = function.get("strict")
    if strict is not None:
        out["strict"] = bool(strict)
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def tool_choice(choice: Any, parallel: Any) -> Json | None:
    """Chat's ``tool_choice`` and ``parallel_tool_calls`` as one Messages ``tool_choice``."""
    out: Json | None
    if choice is None:
        out = None if parallel is not False else {"type": "auto"}
    elif isinstance(choice, str) and choice in _TOOL_CHOICES:
        out = dict(_TOOL_CHOICES[choice])
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = object_at(choice.get("function"), "tool_choice.function")
        out = {"type": "tool", "name": str_at(function.get("name"), "tool_choice.function.name")}
    elif isinstance(choice, dict) and choice.get("type") in ("allowed_tools", "custom"):
        raise refuse("tool_choice", _PROVIDER)
    else:
        raise InvalidRequestError(
            "tool_choice: must be auto, none, required or a function", param="tool_choice"
        )
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def output_format(response_format: Json) -> Json | None:
    """``response_format`` as Anthropic's structured output, so that the answer stays the
    plain JSON text the client parses (a forced tool would turn it into a tool call)."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        spec = object_at(response_format.get("json_schema"), "response_format.json_schema")
        schema = object_at(spec.get("schema"), "response_format.json_schema.schema")
        return {"type": "json_schema", "schema": schema}
    raise InvalidRequestError(
        "response_format.type: must be text, json_object or json_schema",
        param="response_format.type",
    )
