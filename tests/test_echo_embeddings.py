"""The echo provider's embeddings: deterministic unit vectors, float or base64, any size."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.echo_helpers import EchoClients, echo_clients


@pytest.fixture
async def echo() -> AsyncIterator[EchoClients]:
    async with echo_clients() as clients:
        yield clients


@pytest.mark.anyio
async def test_base64_is_the_float_vector_as_little_endian_float32(
    echo: EchoClients,
) -> None:
    request = {"model": "echo-1", "input": ["a b", "c"], "dimensions": 8}
    floats = (await echo.http.post("/v1/embeddings", json=request)).json()
    encoded = (
        await echo.http.post("/v1/embeddings", json={**request, "encoding_format": "base64"})
    ).json()
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        decoded = struct.unpack("<8f", base64.b64decode(packed["embedding"]))
        assert decoded == pytest.approx(plain["embedding"], abs=1e-6)
        assert math.fsum(v * v for v in plain["embedding"]) == pytest.approx(1, abs=1e-4)
    assert floats["usage"]["prompt_tokens"] == 3


@pytest.mark.anyio
async def test_sdk_default_base64_and_dimensions(echo: EchoClients) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes it.
    result = await echo.openai.embeddings.create(model="echo-1", input="hello", dimensions=64)
    assert len(result.data[0].embedding) == 64
    floats = await echo.openai.embeddings.create(
        model="echo-1", input="hello", dimensions=64, encoding_format="float"
    )
    assert result.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    tokens = await echo.openai.embeddings.create(model="echo-1", input=[[1, 2, 3], [4]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 4


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": []}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "8"}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_bad_parameters_are_400s_naming_them(
    echo: EchoClients, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await echo.openai.post(
            "/embeddings", body={"model": "echo-1", **extra}, cast_to=httpx.Response
        )
    assert info.value.param == param
