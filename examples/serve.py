"""Serve an app with uvicorn's own command line, and exit 0 after a graceful stop.

On SIGTERM uvicorn stops accepting connections, lets in-flight requests and streams finish
(up to ``--timeout-graceful-shutdown``), runs the lifespan shutdown (the proxy flushes its
metrics history), and then raises the signal again so the process dies of it: status 143 in a
shell, which supervisors may report as a failure. This launcher makes that second signal a
normal exit: ``python -m examples.serve examples.app:app --port 8000``.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import uvicorn


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    # uvicorn handles the first SIGTERM itself; once it has shut down it restores this
    # handler and raises the signal again, which lands here.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.main(args=argv)


if __name__ == "__main__":
    main()
