"""Stopping the service processes that tests start (redis-server, an identity provider, an
app under uvicorn)."""

from __future__ import annotations

import subprocess

__all__ = ["stop_process"]


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """Ask ``process`` to exit (SIGTERM), and kill it if it has not within ``grace`` seconds;
    returns once it is gone."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
