"""The public surface: sorted ``__all__`` lists whose every name imports."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import llm_proxy_mw
from llm_proxy_mw import errors

MODULES = [
    "llm_proxy_mw",
    "llm_proxy_mw.admin",
    "llm_proxy_mw.auth",
    "llm_proxy_mw.builder",
    "llm_proxy_mw.config",
    "llm_proxy_mw.client",
    "llm_proxy_mw.context",
    "llm_proxy_mw.errors",
    "llm_proxy_mw.healthz",
    "llm_proxy_mw.metrics_app",
    "llm_proxy_mw.mounting",
    "llm_proxy_mw.providers",
    "llm_proxy_mw.proxy",
    "llm_proxy_mw.routing",
    "llm_proxy_mw.transports",
    "llm_proxy_mw.upstream",
    "llm_proxy_mw.wire",
]


def test_root_all_is_sorted() -> None:
    assert llm_proxy_mw.__all__ == sorted(llm_proxy_mw.__all__)


def test_root_all_has_no_duplicates() -> None:
    assert len(set(llm_proxy_mw.__all__)) == len(llm_proxy_mw.__all__)


@pytest.mark.parametrize("name", llm_proxy_mw.__all__)
def test_every_root_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from llm_proxy_mw import {name}", namespace)
    assert namespace[name] is getattr(llm_proxy_mw, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from llm_proxy_mw import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(llm_proxy_mw.__all__)


def test_entry_points_are_public() -> None:
    for name in ("build_proxy", "load_config", "LLMProxy", "ProxyConfig", "WireFormat"):
        assert name in llm_proxy_mw.__all__


def test_llm_proxy_lives_in_its_own_module_and_imports_from_the_old_one() -> None:
    from llm_proxy_mw.builder import LLMProxy

    assert LLMProxy is llm_proxy_mw.LLMProxy
    assert LLMProxy.__module__ == "llm_proxy_mw.proxy"


def test_errors_all_is_sorted_and_importable() -> None:
    assert errors.__all__ == sorted(errors.__all__)
    for name in errors.__all__:
        # Defined there, not imported from elsewhere; a constant (OUTCOMES) has no module.
        module = getattr(getattr(errors, name), "__module__", "llm_proxy_mw.errors")
        assert module == "llm_proxy_mw.errors", name


@pytest.mark.parametrize("module_name", MODULES)
def test_module_all_is_sorted_and_defined(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_package_ships_py_typed() -> None:
    assert (Path(llm_proxy_mw.__file__).parent / "py.typed").is_file()
