"""A real ``redis-server`` on a free loopback port, for store tests.

No persistence (``--save ''``, no AOF), its own temporary directory, started in the
foreground so the test owns the process and stops it. ``port`` may be given to start a
server where a client already tries to connect (outage-then-recovery tests).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require_binary
from tests.fakes.processes import stop_process
from tests.fakes.servers import free_port

__all__ = ["RedisServer", "redis_server"]


class RedisServer:
    """A running server: ``url`` (with the password, if any) and ``port``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, password: str | None) -> None:
        self.process = process
        self.port = port
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{port}/0"


@contextmanager
def redis_server(
    *, port: int | None = None, password: str | None = None, startup_timeout: float = 10.0
) -> Iterator[RedisServer]:
    """Start ``redis-server``, wait until it answers PING, stop it on exit."""
    binary = require_binary("redis-server")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="redis-test-") as directory:
        log = Path(directory, "redis.log")
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", directory]
        args += ["--logfile", str(log)]
        if password:
            args += ["--requirepass", password]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_for_ping(process, port, password, startup_timeout, log)
            yield RedisServer(process, port, password)
        finally:
            stop_process(process)


def _wait_for_ping(
    process: subprocess.Popen[bytes], port: int, password: str | None, timeout: float, log: Path
) -> None:
    command = f"AUTH {password}\r\nPING\r\n" if password else "PING\r\n"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {process.returncode}:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(command.encode())
                if b"+PONG" in _read_some(sock):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not answer PING in {timeout}s")


def _read_some(sock: socket.socket) -> bytes:
    data = b""
    while b"PONG" not in data and b"-" not in data:
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data
