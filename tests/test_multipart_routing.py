"""Multipart forms are routed by their ``model`` field, read as the form streams past.

End to end: curl (as a user types it) and the ``openai`` SDK post transcriptions to the
proxy under uvicorn, in front of two OpenAI providers that serve different models. Then the
scanner itself, fed the same forms split at every byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from llm_proxy_mw import build_proxy
from llm_proxy_mw._multipart import LOOKAHEAD, FormScanner, boundary_of
from llm_proxy_mw.errors import InvalidRequestError
from tests.fakes.servers import UvicornServer
from tests.fakes.upload_sink import UploadSink

TIMEOUT = 10.0
AUDIO = b"RIFF" + bytes(range(256)) * 64


@dataclass
class Deployment:
    url: str
    whisper: UploadSink
    transcribe: UploadSink


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """Two OpenAI providers, ``whisper`` first in config order, and the proxy in front."""
    whisper, transcribe = UploadSink("whisper"), UploadSink("transcribe")
    with (
        UvicornServer(whisper, lifespan="off") as whisper_server,
        UvicornServer(transcribe, lifespan="off") as transcribe_server,
    ):
        config = {
            "providers": {
                name: {
                    "kind": "openai",
                    "base_url": f"{server.url}/v1",
                    "api_key": f"sk-{name}",
                    "models": [model],
                }
                for name, server, model in [
                    ("whisper", whisper_server, "whisper-1"),
                    ("transcribe", transcribe_server, "gpt-4o-transcribe"),
                ]
            },
            "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
        }
        with UvicornServer(build_proxy(config)) as proxy:
            yield Deployment(proxy.url, whisper, transcribe)


@pytest.fixture
def audio_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.wav"
    path.write_bytes(AUDIO)
    return path


def curl(url: str, *fields: str) -> tuple[int, bytes]:
    """``curl -F`` each field, as the docs show it; skipped without curl (failed on CI)."""
    binary = shutil.which("curl")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing on CI")
        pytest.skip("curl is not installed")
    command = [binary, "-sS", "--max-time", str(TIMEOUT), "-w", "\n%{http_code}", url]
    for field in fields:
        command += ["-F", field]
    done = subprocess.run(command, capture_output=True, timeout=TIMEOUT * 2, check=True)
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), body


def test_curl_transcriptions_are_routed_by_the_model_field(
    deployment: Deployment, audio_file: Path
) -> None:
    url = f"{deployment.url}/v1/audio/transcriptions"
    status, body = curl(url, "model=gpt-4o-transcribe", f"file=@{audio_file}")
    assert (status, body) == (200, b'{"text": "transcribe"}')
    status, body = curl(url, "model=whisper-1", f"file=@{audio_file}")
    assert (status, body) == (200, b'{"text": "whisper"}')
    [to_transcribe] = deployment.transcribe.requests
    assert to_transcribe.size > len(AUDIO)
    assert to_transcribe.headers["authorization"] == "Bearer sk-transcribe"
    assert len(deployment.whisper.requests) == 1


def test_the_openai_sdk_transcription_is_routed_by_model(deployment: Deployment) -> None:
    client = openai.OpenAI(base_url=f"{deployment.url}/v1", api_key="k", max_retries=0)
    with client:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", AUDIO, "audio/wav")
        )
    assert result.text == "transcribe"
    assert deployment.whisper.requests == []
    [received] = deployment.transcribe.requests
    assert received.complete


def test_an_unknown_model_in_a_form_is_404_model_not_found(
    deployment: Deployment, audio_file: Path
) -> None:
    url = f"{deployment.url}/v1/audio/transcriptions"
    status, body = curl(url, "model=no-such-model", f"file=@{audio_file}")
    assert status == 404
    assert httpx.Response(404, content=body).json()["error"]["code"] == "model_not_found"
    assert deployment.whisper.requests == deployment.transcribe.requests == []


def test_a_model_after_the_file_is_refused_and_the_provider_never_gets_the_whole_form(
    deployment: Deployment, audio_file: Path
) -> None:
    """Routed before the model was known (to the first provider of the format), the form
    is cut before its model part goes out: a provider never serves a model unrouted. The
    file is large enough that the upload to the provider began before the model came."""
    audio_file.write_bytes(AUDIO * 256)
    url = f"{deployment.url}/v1/audio/translations"
    status, body = curl(url, f"file=@{audio_file}", "model=gpt-4o-transcribe")
    assert status == 400
    message = httpx.Response(400, content=body).json()["error"]["message"]
    assert "before any file part" in message
    [cut] = deployment.whisper.wait_for_requests(1)
    assert not cut.complete
    assert cut.size < len(AUDIO) * 256
    assert deployment.transcribe.requests == []


def test_a_form_without_a_model_goes_to_the_first_provider(deployment: Deployment) -> None:
    client = openai.OpenAI(base_url=f"{deployment.url}/v1", api_key="k", max_retries=0)
    with client:
        created = client.files.create(file=("b.jsonl", b"{}\n" * 100), purpose="batch")
    assert created.bytes > 300
    assert len(deployment.whisper.requests) == 1


# -- the scanner ----------------------------------------------------------------------------


def form(*parts: tuple[str, str | None, bytes], boundary: bytes = b"b0undary") -> bytes:
    out = b"preamble\r\n"
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += b"--" + boundary + b"\r\n"
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


def scan_split(body: bytes, at: int) -> FormScanner:
    scanner = FormScanner(b"b0undary")
    scanner.feed(body[:at])
    scanner.feed(body[at:])
    return scanner


def test_the_model_is_found_wherever_the_chunks_split() -> None:
    body = form(
        ("purpose", None, b"x"), ("model", None, b"gpt-4o-transcribe"), ("file", "a", AUDIO[:99])
    )
    for at in range(len(body) + 1):
        scanner = scan_split(body, at)
        assert (scanner.model, scanner.settled) == ("gpt-4o-transcribe", True), at


def test_a_model_after_a_file_or_given_twice_is_refused_wherever_the_chunks_split() -> None:
    late = form(("file", "a.wav", b"--b0undar" * 3), ("model", None, b"whisper-1"))
    twice = form(("model", None, b"whisper-1"), ("model", None, b"gpt-4o-transcribe"))
    for body in (late, twice):
        for at in range(len(body) + 1):
            with pytest.raises(InvalidRequestError, match="before any file part"):
                scan_split(body, at)


def test_a_file_first_settles_without_a_model() -> None:
    scanner = FormScanner(b"b0undary")
    scanner.feed(form(("file", "a.wav", AUDIO))[:200])
    assert (scanner.model, scanner.settled) == (None, True)


def test_past_the_lookahead_the_model_is_given_up_then_refused() -> None:
    scanner = FormScanner(b"b0undary")
    scanner.feed(form(("prompt", None, b"p" * LOOKAHEAD))[:-20])
    assert (scanner.model, scanner.settled) == (None, True)
    with pytest.raises(InvalidRequestError):
        scanner.feed(b'\r\n--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\n')


@pytest.mark.parametrize(
    ("value", "message"),
    [(b"", "non-empty"), (b"\xff", "UTF-8"), (b"m" * 2000, "too long")],
)
def test_a_bad_model_value_is_a_400(value: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        FormScanner(b"b0undary").feed(form(("model", None, value)))


def test_boundaries_quoted_or_not_and_other_types() -> None:
    assert boundary_of(b'multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of(b"Multipart/Form-Data;boundary=xyz; charset=utf-8") == b"xyz"
    assert boundary_of(b"multipart/form-data") is None
    assert boundary_of(b"application/octet-stream") is None
