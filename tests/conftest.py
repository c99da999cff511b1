"""Shared fixtures: anyio on asyncio, and a proxy client over httpx's ASGI transport."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require_binary(name: str) -> str:
    """The path of a service binary a test starts; skip locally when missing, fail in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path
