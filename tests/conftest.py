"""Shared fixtures: anyio on asyncio, service binaries, and the end-to-end tests' fake
provider on loopback with the recorder of what their SDK clients received."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where used: the SDKs alone take a second to import
    from tests.e2e_helpers import RecordingTransport
    from tests.fakes.provider import FakeProvider, FakeProviderServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- isolation -------------------------------------------------------------------------------
# A proxy built without a ``[store]`` keeps its state in ``./llm-proxy.db`` (metrics totals,
# token families, which provider holds which object): each test, and each module's shared
# proxies, run in a directory of their own, so that no test sees another's state.


@pytest.fixture(scope="module", autouse=True)
def _module_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def _test_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


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
