"""``load_config``: the TOML shape of DESIGN.md, env expansion, strict validation, no leaks."""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path

import pytest

from llm_proxy_mw.config import (
    DEFAULT_BASE_URLS,
    ConfigError,
    ProxyConfig,
    load_config,
    parse_config,
)
from llm_proxy_mw.health import HealthPolicy
from llm_proxy_mw.retry import RetryPolicy

CANARY = "sk-canary-7f3a9c1e5b2d4f60"
CANARY_ENV = {"OPENAI_API_KEY": CANARY, "ALICE_KEY": CANARY, "GITHUB_CLIENT_SECRET": CANARY}

FULL_SHAPE = """
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key = "${OPENAI_API_KEY}"
models = ["gpt-4o-mini", "gpt-4o"]
weight = 1
fallbacks = ["azure-openai"]

[providers.openai.pool]
max_connections = 100
max_keepalive_connections = 20
keepalive_expiry = 5.0

[providers.openai.timeout]
connect = 5.0
read = 600.0
write = 30.0
pool = 10.0

[providers.openai.retry]
max_attempts = 3
backoff_base = 0.5
backoff_max = 20.0
max_retry_after = 60.0

[providers.azure-openai]
kind = "openai"
base_url = "https://example.openai.azure.com/openai/v1"
models = ["gpt-4o"]
weight = 2

[auth]
api_keys = [{ name = "alice", key = "${ALICE_KEY}" }]

[store]
url = "sqlite:///llm-proxy.db"

[metrics]
retention_days = 30
public = false
"""

OAUTH_SECTION = """
[auth.oauth.github]
client_id = "abc"
client_secret = "${GITHUB_CLIENT_SECRET}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ProxyConfig:
    return load_config(write(tmp_path, text), env=CANARY_ENV if env is None else env)


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# -- the shape loads -------------------------------------------------------------------------


def test_full_design_shape_loads(tmp_path: Path) -> None:
    config = load(tmp_path, FULL_SHAPE)

    openai = config.providers["openai"]
    assert list(config.providers) == ["openai", "azure-openai"]
    assert openai.kind == "openai"
    assert openai.url == "https://api.openai.com/v1"
    assert openai.api_key is not None and openai.api_key.get_secret_value() == CANARY
    assert openai.models == ["gpt-4o-mini", "gpt-4o"]
    assert openai.fallbacks == ["azure-openai"]
    assert openai.pool.max_connections == 100
    assert openai.pool.max_keepalive_connections == 20
    assert openai.timeout.read == 600.0
    assert openai.retry.max_attempts == 3
    assert config.providers["azure-openai"].weight == 2
    assert config.auth is not None
    assert config.auth.api_keys[0].name == "alice"
    assert config.auth.api_keys[0].key is not None
    assert config.auth.api_keys[0].key.get_secret_value() == CANARY
    assert config.store.url == "sqlite:///llm-proxy.db"
    assert config.metrics.retention_days == 30
    assert config.metrics.public is False


def test_full_design_shape_with_oauth_section_loads(tmp_path: Path) -> None:
    # The OAuth login signs its session cookie, so it needs a session secret beside it.
    shape = FULL_SHAPE.replace("[auth]\n", '[auth]\nsession_secret = "${SESSION_SECRET}"\n', 1)
    session_secret = "s" * 32
    config = load(tmp_path, shape + OAUTH_SECTION, CANARY_ENV | {"SESSION_SECRET": session_secret})
    assert config.auth is not None
    github = config.auth.oauth["github"]
    assert github.client_id == "abc"
    assert github.client_secret.get_secret_value() == CANARY
    assert config.auth.session_secret is not None
    assert config.auth.session_secret.get_secret_value() == session_secret
    assert config.auth.api_keys[0].name == "alice"


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        [providers.o]
        kind = "openai"
        [providers.a]
        kind = "anthropic"
        [providers.e]
        kind = "echo"
        """,
    )
    assert config.providers["o"].url == "https://api.openai.com/v1"
    assert config.providers["a"].url == "https://api.anthropic.com/v1"
    assert config.providers["e"].url == DEFAULT_BASE_URLS["echo"]
    for provider in config.providers.values():
        assert provider.base_url is None
        assert provider.models == ["*"]
        assert provider.weight == 1
        assert provider.fallbacks == []
        assert provider.api_key is None
    assert config.auth is None
    assert config.store.url.startswith("sqlite://")
    assert config.metrics.public is False


def test_request_body_timeout_is_a_top_level_key_of_30_seconds_by_default(
    tmp_path: Path,
) -> None:
    provider = '[providers.o]\nkind = "openai"\n'
    assert load(tmp_path, provider).request_body_timeout == 30.0
    assert load(tmp_path, "request_body_timeout = 2.5\n" + provider).request_body_timeout == 2.5
    for bad in ("0", "-1", '"soon"'):
        message = config_error(tmp_path, f"request_body_timeout = {bad}\n" + provider)
        assert "request_body_timeout" in message


def test_retry_and_health_defaults(tmp_path: Path) -> None:
    provider = load(tmp_path, '[providers.o]\nkind = "openai"\n').providers["o"]
    assert provider.retry.max_attempts == 4
    defaults = {
        "budget_max_tokens": 50.0,
        "budget_token_ratio": 0.5,
        "window_seconds": 30,
        "min_calls": 10,
        "failure_rate": 0.75,
        "cooldown_seconds": 10.0,
        "half_open_probes": 3,
    }
    assert provider.health.model_dump() == defaults
    # The middlewares' own defaults, used without a config, are the same numbers.
    assert RetryPolicy().max_attempts == 4
    assert provider.retry.policy() == RetryPolicy()
    assert dataclasses.asdict(HealthPolicy()) == defaults


def test_health_section_loads_and_is_validated(tmp_path: Path) -> None:
    provider = load(
        tmp_path,
        """
        [providers.o]
        kind = "openai"
        [providers.o.health]
        budget_max_tokens = 20
        failure_rate = 0.6
        """,
    ).providers["o"]
    health = provider.health
    assert (health.budget_max_tokens, health.failure_rate) == (20.0, 0.6)
    assert (health.min_calls, health.cooldown_seconds) == (10, 10.0)  # the rest defaulted
    message = config_error(
        tmp_path,
        """
        [providers.o]
        kind = "openai"
        [providers.o.health]
        budget_max_tokens = 0
        window_seconds = 0
        min_calls = 0
        failure_rate = 1.5
        min_cals = 3
        """,
    )
    lines = message.splitlines()[1:]
    for field in ("budget_max_tokens", "window_seconds", "min_calls", "failure_rate", "min_cals"):
        assert sum(f"providers.o.health.{field}:" in line for line in lines) == 1, message
    assert len(lines) == 5


def test_base_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    config = load(
        tmp_path, '[providers.v]\nkind = "openai"\nbase_url = "http://vllm.local:8000/v1/"\n'
    )
    assert config.providers["v"].url == "http://vllm.local:8000/v1"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


def test_invalid_toml_is_a_config_error_without_the_secret(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, f'[providers.a]\nkind = "openai"\napi_key = "{CANARY}\n', env={}
    )
    assert "not valid TOML" in message
    assert CANARY not in message


# -- environment expansion -------------------------------------------------------------------


def test_env_references_expand_in_nested_strings_and_lists(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        [providers.o]
        kind = "openai"
        base_url = "https://${HOST}/v1"
        models = ["${MODEL}", "plain"]
        """,
        env={"HOST": "llm.internal", "MODEL": "gpt-4o"},
    )
    assert config.providers["o"].url == "https://llm.internal/v1"
    assert config.providers["o"].models == ["gpt-4o", "plain"]


def test_env_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", CANARY)
    path = write(tmp_path, '[providers.o]\nkind = "openai"\napi_key = "${LLM_PROXY_TEST_KEY}"\n')
    key = load_config(path).providers["o"].api_key
    assert key is not None and key.get_secret_value() == CANARY


def test_missing_env_variable_names_the_variable_and_field_path(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, '[providers.openai]\nkind = "openai"\napi_key = "${NOPE_KEY}"\n', env={}
    )
    assert "NOPE_KEY" in message
    assert "providers.openai.api_key" in message
    assert "proxy.toml" in message


def test_missing_env_variable_inside_a_list_names_the_index(tmp_path: Path) -> None:
    text = FULL_SHAPE.replace("${ALICE_KEY}", "${BOB_KEY}")
    message = config_error(tmp_path, text)
    assert "BOB_KEY" in message
    assert "auth.api_keys[0].key" in message


def test_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        [providers.o]
        kind = "openai"
        api_key = "pa$$word-$${NOT_EXPANDED}-$PLAIN"
        """,
        env={},
    )
    key = config.providers["o"].api_key
    assert key is not None
    assert key.get_secret_value() == "pa$word-${NOT_EXPANDED}-$PLAIN"


def test_non_string_values_are_not_expanded(tmp_path: Path) -> None:
    config = load(tmp_path, '[providers.o]\nkind = "openai"\nweight = 3\n', env={})
    assert config.providers["o"].weight == 3


# -- strict validation -----------------------------------------------------------------------


def test_typo_in_a_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.openai]\nkind = "openai"\nmodles = ["gpt-4o"]\n')
    assert "providers.openai.modles" in message
    assert "not permitted" in message


def test_unknown_top_level_section_is_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.o]\nkind = "openai"\n[metircs]\npublic = true\n')
    assert "metircs" in message


def test_every_failure_is_listed_in_one_message(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        """
        [providers.a]
        kind = "openai"
        modles = ["x"]
        weight = 0

        [providers.b]
        kind = "azure"

        [providers.c]
        kind = "anthropic"
        base_url = "ftp://example.com/v1"
        [providers.c.timeout]
        read = -1
        """,
    )
    lines = message.splitlines()
    assert lines[0].endswith("proxy.toml is invalid:")
    for path in (
        "providers.a.modles",
        "providers.a.weight",
        "providers.b.kind",
        "providers.c.base_url",
        "providers.c.timeout.read",
    ):
        assert sum(path in line for line in lines[1:]) == 1, (path, message)
    assert len(lines) == 6


def test_providers_are_required(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[metrics]\npublic = true\n")
    assert "providers" in message


def test_provider_kind_is_required(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.o]\nbase_url = "https://x.example/v1"\n')
    assert "providers.o.kind" in message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/v1",
        "api.openai.com/v1",
        "https://example.com/v1?api-version=1",
        "https://example.com/v1#frag",
        "https:///v1",
        "https://exa mple.com/v1",
        "",
    ],
)
def test_invalid_base_url_is_rejected(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, f'[providers.o]\nkind = "openai"\nbase_url = "{url}"\n')
    assert "providers.o.base_url" in message


# -- URLs that fetch keys or carry secrets: https, or plain http to this machine only --------

SECRET_URL_FIELDS = {
    "auth.jwt_issuers.corp.jwks_url": (
        '[auth.jwt_issuers.corp]\nissuer = "https://idp.example"\naudience = "a"\n'
        'jwks_url = "{url}"\n'
    ),
    "auth.oauth.corp.server_metadata_url": (
        '[auth]\nsession_secret = "' + "s" * 32 + '"\n[auth.oauth.corp]\n'
        'client_id = "c"\nclient_secret = "s"\nserver_metadata_url = "{url}"\n'
    ),
    "providers.o.oauth.token_url": (
        '[providers.o.oauth]\ntoken_url = "{url}"\nclient_id = "c"\nclient_secret = "s"\n'
    ),
}


@pytest.mark.parametrize("field", SECRET_URL_FIELDS)
@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/x",
        "http://10.0.0.7/x",
        "http://0.0.0.0:8080/x",
        "http://127.0.0.1.nip.io/x",
        "http://localhost.evil.example/x",
        "http://2130706433/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[::1/x",
        "https:///x",
        "ftp://idp.example/x",
    ],
)
def test_plain_http_to_another_host_is_refused_for_keys_and_secrets(
    tmp_path: Path, field: str, url: str
) -> None:
    message = config_error(tmp_path, PROVIDER + SECRET_URL_FIELDS[field].format(url=url))
    assert field in message
    if url.startswith("http://"):
        assert "loopback" in message


@pytest.mark.parametrize("field", SECRET_URL_FIELDS)
@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/x",
        "http://127.0.0.1:8080/x",
        "http://127.3.4.5/x",
        "http://[::1]:9000/x",
        "http://localhost/x",
        "http://LocalHost:8000/x",
    ],
)
def test_https_or_plain_http_to_loopback_is_accepted(tmp_path: Path, field: str, url: str) -> None:
    load(tmp_path, PROVIDER + SECRET_URL_FIELDS[field].format(url=url))


def test_invalid_provider_name_is_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers."bad name!"]\nkind = "openai"\n')
    assert "bad name!" in message


def test_empty_models_list_is_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.o]\nkind = "openai"\nmodels = []\n')
    assert "providers.o.models" in message


def test_header_with_newline_is_rejected(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, '[providers.o]\nkind = "openai"\nheaders = { "x-a" = "1\\r\\nx-b: 2" }\n'
    )
    assert "providers.o.headers" in message


def test_fallback_to_unknown_provider_is_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.main]\nkind = "openai"\nfallbacks = ["ghost"]\n')
    assert "providers.main.fallbacks" in message
    assert "ghost" in message


def test_fallback_to_itself_is_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.main]\nkind = "openai"\nfallbacks = ["main"]\n')
    assert "providers.main.fallbacks" in message
    assert "itself" in message


def test_fallback_to_a_provider_of_another_kind_is_allowed(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        [providers.gpt]
        kind = "openai"
        fallbacks = ["claude"]
        [providers.claude]
        kind = "anthropic"
        """,
    )
    assert config.providers["gpt"].fallbacks == ["claude"]


def test_fallback_to_echo_is_allowed_from_either_wire_format(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        [providers.gpt]
        kind = "openai"
        fallbacks = ["demo"]
        [providers.claude]
        kind = "anthropic"
        fallbacks = ["demo"]
        [providers.demo]
        kind = "echo"
        """,
    )
    assert config.providers["claude"].fallbacks == ["demo"]


def test_translation_options_default_per_provider(tmp_path: Path) -> None:
    config = load(tmp_path, '[providers.o]\nkind = "openai"\n')
    assert config.providers["o"].responses_api is True
    assert config.providers["o"].default_max_tokens == 4096
    assert config.models == {}
    config = load(
        tmp_path,
        '[providers.o]\nkind = "openai"\nresponses_api = false\ndefault_max_tokens = 1\n',
    )
    assert config.providers["o"].responses_api is False
    assert config.providers["o"].default_max_tokens == 1


def test_default_max_tokens_must_be_positive(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[providers.o]\nkind = "openai"\ndefault_max_tokens = 0\n')
    assert "providers.o.default_max_tokens" in message


MODELS = """
[providers.gpt]
kind = "openai"
models = ["gpt-4o"]
[providers.claude]
kind = "anthropic"
models = ["claude-sonnet-4-5"]
"""


def test_model_fallbacks_load(tmp_path: Path) -> None:
    config = load(tmp_path, MODELS + '[models."gpt-4o"]\nfallbacks = ["claude-sonnet-4-5"]\n')
    assert config.models["gpt-4o"].fallbacks == ["claude-sonnet-4-5"]


def test_a_model_fallback_must_be_served(tmp_path: Path) -> None:
    message = config_error(tmp_path, MODELS + '[models."gpt-4o"]\nfallbacks = ["gpt-9"]\n')
    assert "models.gpt-4o.fallbacks" in message
    assert "'gpt-9'" in message


def test_a_wildcard_provider_serves_any_model_fallback(tmp_path: Path) -> None:
    text = MODELS + '[providers.any]\nkind = "echo"\n[models."gpt-4o"]\nfallbacks = ["gpt-9"]\n'
    assert load(tmp_path, text).models["gpt-4o"].fallbacks == ["gpt-9"]


def test_a_model_cannot_fall_back_to_itself(tmp_path: Path) -> None:
    message = config_error(tmp_path, MODELS + '[models."gpt-4o"]\nfallbacks = ["gpt-4o"]\n')
    assert "models.gpt-4o.fallbacks" in message
    assert "itself" in message


def test_a_configured_model_must_be_served(tmp_path: Path) -> None:
    message = config_error(tmp_path, MODELS + '[models."gpt-9"]\nfallbacks = ["gpt-4o"]\n')
    assert "models.gpt-9" in message


def test_model_options_reject_unknown_keys(tmp_path: Path) -> None:
    message = config_error(tmp_path, MODELS + '[models."gpt-4o"]\nfallback = ["x"]\n')
    assert "models.gpt-4o.fallback" in message


# -- client API keys -------------------------------------------------------------------------

PROVIDER = '[providers.o]\nkind = "openai"\n'
SHA = "a" * 64


@pytest.mark.parametrize(
    "entry",
    [
        '{ name = "alice", key = "' + CANARY + '" }',
        '{ name = "alice", key_sha256 = "' + SHA + '", admin = true }',
    ],
)
def test_api_key_with_exactly_one_secret_is_accepted(tmp_path: Path, entry: str) -> None:
    config = load(tmp_path, PROVIDER + f"[auth]\napi_keys = [{entry}]\n")
    assert config.auth is not None
    assert config.auth.api_keys[0].name == "alice"


@pytest.mark.parametrize(
    "entry",
    [
        '{ name = "alice", key = "' + CANARY + '", key_sha256 = "' + SHA + '" }',
        '{ name = "alice" }',
    ],
)
def test_api_key_needs_exactly_one_of_key_and_hash(tmp_path: Path, entry: str) -> None:
    message = config_error(tmp_path, PROVIDER + f"[auth]\napi_keys = [{entry}]\n")
    assert "auth.api_keys.0" in message
    assert "exactly one of key or key_sha256" in message
    assert CANARY not in message


def test_short_api_key_is_rejected_without_showing_it(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, PROVIDER + '[auth]\napi_keys = [{ name = "alice", key = "sk-short-9q" }]\n'
    )
    assert "at least 16 characters" in message
    assert "sk-short-9q" not in message


def test_malformed_key_hash_is_rejected(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, PROVIDER + '[auth]\napi_keys = [{ name = "alice", key_sha256 = "xyz" }]\n'
    )
    assert "auth.api_keys.0.key_sha256" in message


def test_duplicate_api_key_names_are_rejected(tmp_path: Path) -> None:
    entry = '{ name = "alice", key_sha256 = "' + SHA + '" }'
    message = config_error(tmp_path, PROVIDER + f"[auth]\napi_keys = [{entry}, {entry}]\n")
    assert "unique" in message


def test_auth_keys_are_optional_but_oauth_needs_a_long_session_secret(tmp_path: Path) -> None:
    # Every [auth] section is optional (with none, no one gets in); the OAuth login is not
    # usable without a secret of 32+ characters to sign its session cookie.
    config = load(tmp_path, PROVIDER + "[auth]\napi_keys = []\n")
    assert config.auth is not None and config.auth.api_keys == []
    oauth = '[auth.oauth.corp]\nclient_id = "c"\nclient_secret = "s"\n'
    oauth += 'server_metadata_url = "https://idp.example/.well-known/openid-configuration"\n'
    for auth in ("[auth]\n", '[auth]\nsession_secret = "too-short"\n'):
        message = config_error(tmp_path, PROVIDER + auth + oauth)
        assert "session_secret of at least 32 characters" in message
    long_enough = '[auth]\nsession_secret = "' + "s" * 32 + '"\n'
    assert load(tmp_path, PROVIDER + long_enough + oauth).auth is not None


OAUTH_GITHUB = (
    '[auth]\nsession_secret = "' + "s" * 32 + '"\n'
    '[auth.oauth.github]\nclient_id = "c"\nclient_secret = "s"\n'
)
OAUTH_CORP = OAUTH_GITHUB.replace("github]", "corp]") + (
    'server_metadata_url = "https://idp.example/.well-known/openid-configuration"\n'
)


@pytest.mark.parametrize("field", ["allowed_users", "admin_users"])
@pytest.mark.parametrize(
    ("section", "entry", "explains"),
    [
        # A bare entry could name a user by id or by login: GitHub allows all-digit logins.
        (OAUTH_GITHUB, "583231", ["id:<", "login:<", "email:<"]),
        (OAUTH_GITHUB, "octocat", ["id:<", "login:<", "email:<"]),
        (OAUTH_GITHUB, "a@b.c", ["email:<"]),
        (OAUTH_CORP, "u-42", ["sub:<"]),
        (OAUTH_GITHUB, "ID:583231", ["id:<"]),
        (OAUTH_GITHUB, "id:", ["id:<"]),
        (OAUTH_GITHUB, "login: octocat", ["login:<"]),
        (OAUTH_GITHUB, "id:octocat", ["numeric", "login:octocat"]),
        (OAUTH_GITHUB, "sub:583231", ["id:583231"]),
        (OAUTH_GITHUB, "email:octocat", ["email address"]),
        (OAUTH_CORP, "login:alice", ["sub:", "email:"]),
    ],
)
def test_oauth_user_lists_name_the_kind_of_each_entry(
    tmp_path: Path, field: str, section: str, entry: str, explains: list[str]
) -> None:
    message = config_error(tmp_path, PROVIDER + section + f"{field} = [{entry!r}]\n")
    assert f"{field}" in message and repr(entry) in message
    for hint in explains:
        assert hint in message


@pytest.mark.parametrize(
    ("section", "entries"),
    [
        (OAUTH_GITHUB, ["id:583231", "login:octocat", "login:583231", "email:A@B.example"]),
        (OAUTH_CORP, ["sub:auth0|5f1c", "id:u-42", "email:a@b.example"]),
    ],
)
def test_oauth_user_lists_take_typed_entries(
    tmp_path: Path, section: str, entries: list[str]
) -> None:
    config = load(tmp_path, PROVIDER + section + f"admin_users = {entries!r}\n")
    assert config.auth is not None
    (idp,) = config.auth.oauth.values()
    assert idp.admin_users == entries


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ('public_url = "ftp://llm.example.com"', "auth.public_url"),
        ('public_url = "https://llm.example.com/llm?x=1"', "auth.public_url"),
        ('public_url = "https://user@llm.example.com/"', "auth.public_url"),
        ('public_url = "https://llm.example.com:99999/"', "auth.public_url"),
        ('allowed_hosts = ["llm.example.com/llm"]', "auth.allowed_hosts"),
        ('allowed_hosts = ["*.example.com"]', "auth.allowed_hosts"),
        ('public_url = "https://a.example"\nallowed_hosts = ["a.example"]', "not both"),
    ],
)
def test_the_public_origin_settings_are_checked(
    tmp_path: Path, setting: str, complaint: str
) -> None:
    message = config_error(
        tmp_path, PROVIDER + OAUTH_CORP.replace("[auth]\n", f"[auth]\n{setting}\n")
    )
    assert complaint in message


def test_the_public_origin_settings_are_normalised(tmp_path: Path) -> None:
    text = PROVIDER + OAUTH_CORP.replace(
        "[auth]\n", '[auth]\npublic_url = "https://llm.example.com/llm/"\n'
    )
    auth = load(tmp_path, text).auth
    assert auth is not None and auth.public_url == "https://llm.example.com/llm"
    text = PROVIDER + OAUTH_CORP.replace(
        "[auth]\n", '[auth]\nallowed_hosts = ["LLM.example.com", "[::1]:8000"]\n'
    )
    auth = load(tmp_path, text).auth
    assert auth is not None and auth.allowed_hosts == ["llm.example.com", "[::1]:8000"]


# -- secrets never leak ----------------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        FULL_SHAPE
        + '\n[providers.azure-openai.headers]\napi-key = "${OPENAI_API_KEY}"\n'
        + 'x-plain = "visible"\n',
    )
    assert config.providers["azure-openai"].headers["api-key"] == CANARY
    for text in (repr(config), str(config), repr(config.providers), repr(config.auth)):
        assert CANARY not in text


def test_secrets_never_appear_in_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path,
            """
            [providers.o]
            kind = "${OPENAI_API_KEY}"
            api_key = "${OPENAI_API_KEY}"
            weight = "${OPENAI_API_KEY}"
            models = ["${OPENAI_API_KEY}\\n"]
            [auth]
            api_keys = [{ name = "alice", key = "${ALICE_KEY}", key_sha256 = "${ALICE_KEY}" }]
            """,
        )
    message = str(info.value)
    assert "providers.o.kind" in message
    assert "providers.o.weight" in message
    assert CANARY not in message
    # A crash at startup prints the traceback: the pydantic error (which holds the inputs)
    # must not be chained into it.
    assert CANARY not in "".join(traceback.format_exception(info.value))


def test_parse_config_validates_a_mapping_with_the_same_messages() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"o": {"kind": "openai", "modles": []}}}, source="inline")
    assert str(info.value).startswith("inline is invalid:")
    assert "providers.o.modles" in str(info.value)


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load(tmp_path, PROVIDER)
    with pytest.raises(ValueError, match="frozen"):
        config.providers["o"].weight = 5  # type: ignore[misc]
