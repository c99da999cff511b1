"""The extras: what each installs, and a config that needs a missing one fails at load.

A missing extra is simulated in process by blocking its module (``sys.modules[name] = None``
makes both ``import`` and ``find_spec`` report it absent). ``tests/test_install.py`` proves
the light install for real, in a fresh virtual environment.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from pydantic import ValidationError

from llm_proxy_mw import ProxyConfig, build_proxy, load_config
from llm_proxy_mw._extras import EXTRAS, installed, missing_extras
from llm_proxy_mw.config import ConfigError, parse_config

PYPROJECT = tomllib.loads(
    (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
)["project"]
KEY = "extras-test-key-0123456789"
SECRET = "s" * 32

TOKENS = {"tokens": {}}
JWT_ISSUERS = {
    "jwt_issuers": {
        "corp": {"issuer": "https://idp.example", "audience": "a", "jwks_url": "https://idp/j"}
    }
}
OAUTH = {
    "oauth": {"github": {"client_id": "c", "client_secret": "s"}},
    "session_secret": SECRET,
}
REDIS = "redis://127.0.0.1:9/0"


def config(auth: dict[str, Any] | None = None, url: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "providers": {"echo": {"kind": "echo"}},
        "auth": {"api_keys": [{"name": "ci", "key": KEY}], **(auth or {})},
    }
    if url is not None:
        data["store"] = {"url": url}
    return data


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


# -- what each extra installs --------------------------------------------------------------


#: The distributions whose module has another name.
MODULE_OF = {"opentelemetry_api": "opentelemetry.trace"}


def requirement_names(extra: str) -> set[str]:
    """The modules of the distributions an extra of pyproject.toml installs, its own extras
    followed."""
    names = set()
    for text in PYPROJECT["optional-dependencies"][extra]:
        requirement = Requirement(text)
        if requirement.name == PYPROJECT["name"]:
            for inner in requirement.extras:
                names |= requirement_names(inner)
        else:
            name = requirement.name.replace("-", "_")
            names.add(MODULE_OF.get(name, name))
    return names


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_extra_installs_the_modules_its_check_looks_for(extra: str) -> None:
    assert requirement_names(extra) == set(EXTRAS[extra])


def test_all_is_every_extra_and_the_core_has_none_of_them() -> None:
    optional = {name for modules in EXTRAS.values() for name in modules}
    assert requirement_names("all") == optional
    core = {Requirement(text).name.replace("-", "_") for text in PYPROJECT["dependencies"]}
    assert not core & optional
    assert optional == {
        "authlib",
        "genai_prices",
        "httpx2",
        "itsdangerous",
        "joserfc",
        "opentelemetry.trace",
        "redis",
    }


def test_dev_adds_nothing_that_all_brings() -> None:
    dev = {Requirement(text).name for text in PYPROJECT["optional-dependencies"]["dev"]}
    assert not dev & requirement_names("all")


def test_with_every_extra_installed_any_config_loads() -> None:
    everything = config({**TOKENS, **JWT_ISSUERS, **OAUTH}, url=REDIS)
    assert all(installed(extra) for extra in EXTRAS)
    assert missing_extras(parse_config(everything)) is None


# -- a config that needs a missing extra ---------------------------------------------------


@pytest.mark.parametrize(
    ("data", "blocked", "message"),
    [
        (config(TOKENS), "joserfc", "[auth.tokens] needs the tokens extra"),
        (config(JWT_ISSUERS), "joserfc", "[auth.jwt_issuers] needs the tokens extra"),
        (config(OAUTH), "authlib", "[auth.oauth] needs the oauth extra"),
        (config(OAUTH), "itsdangerous", "[auth.oauth] needs the oauth extra"),
        (config(url=REDIS), "redis", "a redis:// [store] url needs the redis extra"),
    ],
    ids=["tokens", "jwt_issuers", "oauth", "oauth session", "redis"],
)
def test_a_section_without_its_extra_names_it_and_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], blocked: str, message: str
) -> None:
    block(monkeypatch, blocked)
    extra = message.split(" needs the ")[1].split()[0]
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert f"{message}: pip install 'llm-proxy-mw[{extra}]'" in str(caught.value)


def test_every_missing_extra_is_named_with_one_command(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "joserfc", "redis")
    with pytest.raises(ConfigError) as caught:
        parse_config(config({**TOKENS, **JWT_ISSUERS}, url=REDIS))
    assert str(caught.value).splitlines()[1:] == [
        "  (top level): [auth.tokens] needs the tokens extra, [auth.jwt_issuers] needs the "
        "tokens extra, a redis:// [store] url needs the redis extra: "
        "pip install 'llm-proxy-mw[redis,tokens]'"
    ]


def test_every_way_of_loading_a_config_checks_its_extras(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(
        f'[providers.echo]\nkind = "echo"\n[auth]\napi_keys = [{{ name = "ci", key = "{KEY}" }}]\n'
        "[auth.tokens]\n",
        encoding="utf-8",
    )
    block(monkeypatch, "joserfc")
    command = "pip install 'llm-proxy-mw[tokens]'"
    with pytest.raises(ConfigError, match=r"proxy\.toml is invalid") as caught:
        load_config(path)
    assert command in str(caught.value)
    for source in (path, config(TOKENS)):
        with pytest.raises(ConfigError) as caught:
            build_proxy(source)
        assert command in str(caught.value)
    with pytest.raises(ValidationError) as by_hand:
        ProxyConfig.model_validate(config(TOKENS))
    assert command in str(by_hand.value)


# -- API keys without the tokens extra -----------------------------------------------------


@pytest.mark.anyio
async def test_without_the_tokens_extra_api_keys_serve_and_tokens_are_not_offered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    block(monkeypatch, "joserfc")
    proxy = build_proxy(config(url=f"sqlite:///{tmp_path}/store.db"))
    assert proxy.auth_setup is not None
    assert proxy.auth_setup.endpoints == [] and len(proxy.auth_setup.authenticators) == 1
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    key = {"authorization": f"Bearer {KEY}"}
    token = {"authorization": "Bearer eyJhbGciOiJFZDI1NTE5In0.e30.c2ln"}
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://h") as client,
    ):
        assert (
            await client.post("/v1/chat/completions", json=chat, headers=key)
        ).status_code == 200
        refused = await client.post("/v1/chat/completions", json=chat, headers=token)
        assert refused.status_code == 401
        for method, path in [
            ("POST", "/auth/tokens"),
            ("POST", "/auth/token"),
            ("GET", "/.well-known/jwks.json"),
        ]:
            assert (await client.request(method, path, headers=key)).status_code == 404
