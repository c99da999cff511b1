"""The minimal value of a JSON Schema, as the echo provider answers tools and structured
output with."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy_mw.transports._echo_schema import minimal_value


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string"}, "said"),
        ({"type": "string", "maxLength": 2}, "sa"),
        ({"type": "integer", "minimum": 3}, 3),
        ({"type": "number"}, 0),
        ({"type": "boolean"}, False),
        ({"type": "null"}, None),
        ({"type": ["null", "string"]}, "said"),
        ({"const": 7}, 7),
        ({"enum": ["b", "a"]}, "b"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, 0),
        ({"type": "array", "items": {"type": "boolean"}}, []),
        ({"type": "array", "items": {"type": "boolean"}, "minItems": 2}, [False, False]),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {}),
        ({"properties": {"a": {"type": "string"}}, "required": ["a", "b"]}, {"a": "said", "b": {}}),
        ({}, {}),
        ("not a schema", {}),
    ],
)
def test_minimal_values(schema: Any, value: Any) -> None:
    assert minimal_value(schema, "said") == value


def test_local_references_are_followed() -> None:
    schema = {
        "$defs": {
            "Inner": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        },
        "type": "object",
        "properties": {"inner": {"$ref": "#/$defs/Inner"}, "far": {"$ref": "http://x/y"}},
        "required": ["inner", "far"],
    }
    assert minimal_value(schema, "") == {"inner": {"n": 0}, "far": {}}


def test_a_schema_requiring_itself_ends() -> None:
    schema = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    value = minimal_value(schema, "")
    depth = 0
    while value:
        value, depth = value["next"], depth + 1
    assert 0 < depth < 40
