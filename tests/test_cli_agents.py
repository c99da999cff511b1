"""CLI agents against the proxy, offline: Claude Code and Codex CLI each run a session of three
tool turns through the example app on uvicorn, to a scripted model behind a provider of either
kind, and every model request must be a stream (no non-streaming fallback).

The model (``tests.cli_agents.fake_model``) asks the agent to read three files in a temporary
directory, one per turn, then answers; it sees each file's content come back as a tool result.
The sessions to a provider of the other kind (Claude Code to an ``openai`` provider, Codex to an
``anthropic`` one) go through the proxy's translation, streams included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_proxy_mw.apis import Api
from tests.cli_agents.agents import Agent, claude_code, codex, require_cli
from tests.cli_agents.fake_model import FINAL_ANSWER, FakeModel, ModelRequest, ToolCall, answer
from tests.e2e_helpers import CLIENT_KEY, config_toml, provider_toml, serve_example_app
from tests.fakes.servers import UvicornServer
from tests.goldens import validate_event, validate_response

#: The model each provider kind serves, named as a user of that kind would.
_MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-5.5"}
_KEY_VARS = {"anthropic": "FAKE_ANTHROPIC_KEY", "openai": "FAKE_OPENAI_KEY"}
_NOTES = ("note1.txt", "note2.txt", "note3.txt")

AgentFactory = Callable[..., Agent]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The agent's working directory with the three files it is asked to read."""
    work = tmp_path / "work"
    work.mkdir()
    for n, name in enumerate(_NOTES, 1):
        (work / name).write_text(f"note {n}: the secret word is lantern{n}\n", encoding="utf-8")
    return work


@dataclass(frozen=True)
class Stage:
    """The scripted model on loopback (``url``), the agent's home and working directory."""

    model: FakeModel
    url: str
    home: Path
    workdir: Path


@pytest.fixture
def stage(tmp_path: Path, workdir: Path) -> Iterator[Stage]:
    fake = FakeModel(notes=[str(workdir / name) for name in _NOTES])
    with UvicornServer(fake, lifespan="off") as server:
        yield Stage(fake, server.url, tmp_path, workdir)


def _session(stage: Stage, agent: AgentFactory, kind: str) -> list[ModelRequest]:
    """Serve the proxy with one provider of ``kind`` at the model, run the agent through it,
    check the session ended with the model's answer; the requests the model received."""
    name = _MODELS[kind]
    provider = provider_toml(
        kind, kind=kind, base_url=f"{stage.url}/v1", key_var=_KEY_VARS[kind], models=[name]
    )
    with serve_example_app(config_toml(provider), stage.home) as proxy:
        base_url = proxy.url + ("/llm" if agent is claude_code else "/llm/v1")
        cli = require_cli("claude" if agent is claude_code else "codex")
        run = agent(cli, base_url=base_url, api_key=CLIENT_KEY, model=name, home=stage.home)
        session = run.run(stage.workdir)
    assert session.returncode == 0, session.tail()
    if agent is claude_code:
        (result,) = session.json_lines()
        assert result["subtype"] == "success", result
        assert result["result"] == FINAL_ANSWER
    else:
        events = session.json_lines()
        commands = [e["item"] for e in events if e.get("type") == "item.completed"]
        ran = [c for c in commands if c["type"] == "command_execution" and c["exit_code"] == 0]
        assert len(ran) == len(_NOTES), events
        assert commands[-1] == {**commands[-1], "type": "agent_message", "text": FINAL_ANSWER}
    return stage.model.model_requests


@pytest.mark.parametrize(
    ("agent", "kind"),
    [
        pytest.param(claude_code, "anthropic", id="claude-code-to-anthropic"),
        pytest.param(claude_code, "openai", id="claude-code-to-openai"),
        pytest.param(codex, "openai", id="codex-to-openai"),
        pytest.param(codex, "anthropic", id="codex-to-anthropic"),
    ],
)
def test_three_tool_turns_all_streamed(stage: Stage, agent: AgentFactory, kind: str) -> None:
    requests = _session(stage, agent, kind)
    fallbacks = [r.path for r in requests if not r.streamed]
    assert not fallbacks, f"non-streaming requests: {fallbacks}"
    # What the provider speaks: translated to Chat Completions when Claude Code's Messages
    # go to an OpenAI-kind provider, Codex's Responses passed through to one.
    spoken = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}[kind]
    if agent is codex and kind == "openai":
        spoken = "/v1/responses"
    assert {r.path for r in requests} == {spoken}
    loop = [r for r in requests if r.tool_names]
    assert [len(r.tool_results) for r in loop] == list(range(len(_NOTES) + 1))
    results = loop[-1].tool_results
    for n, result in enumerate(results, 1):
        assert f"lantern{n}" in result, results


def test_a_cut_stream_shows_as_a_non_streaming_fallback(stage: Stage) -> None:
    """The check above can fail: when a stream ends before ``message_stop``, Claude Code asks
    again without ``stream`` (the double cost the issue names), and the model sees it."""
    stage.model.cut_streams = 1
    requests = _session(stage, claude_code, "anthropic")
    assert [r.streamed for r in requests][:3] == [True, False, True]


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/messages", Api.MESSAGES),
        ("/v1/chat/completions", Api.CHAT),
        ("/v1/responses", Api.RESPONSES),
    ],
)
@pytest.mark.parametrize("call", [None, ToolCall("call_1", "Read", {"file_path": "/tmp/x"})])
def test_the_scripted_model_answers_by_the_sdks_own_types(
    path: str, api: Api, call: ToolCall | None
) -> None:
    """What the agents get from the model is valid as the official SDKs define it."""
    asked = {"model": "m", "messages": [], "input": [], "stream_options": {"include_usage": True}}
    body, events = answer(ModelRequest(path, {}, asked), call)
    validate_response(api, body)
    for _, event in events:
        validate_event(api, event)
