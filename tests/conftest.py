"""Shared fixtures: anyio on asyncio, service binaries, and the end-to-end tests' fake
provider on loopback with the recorder of what their SDK clients received."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where used: the SDKs alone take a second to import
    from tests.e2e_helpers import RecordingTransport
    from tests.fakes.provider import FakeProvider, FakeProviderServer


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


# ---- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeProviderServer]:
    """A ``FakeProvider`` on loopback, for the tests of one module."""
    from tests.fakes.provider import FakeProviderServer

    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def provider(fake_server: FakeProviderServer) -> Iterator[FakeProvider]:
    """The module's fake provider, with nothing recorded or scripted (also after the test:
    every hold is released)."""
    fake: FakeProvider = fake_server.app
    fake.reset()
    yield fake
    fake.reset()


@pytest.fixture
def recorder() -> Iterator[RecordingTransport]:
    """Everything the SDK clients of one test received; no provider key may be in it."""
    from tests.e2e_helpers import RecordingTransport

    recorder = RecordingTransport()
    yield recorder
    assert recorder.leaked() == [], "a provider key reached a client"
