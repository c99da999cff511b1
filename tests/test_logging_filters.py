"""``StartupErrorLine``: a proxy that cannot start is logged as its reason, one line; any other
record, tracebacks included, passes as it was. (``RedactQuerySecrets`` is tested with the
secrets canary.)"""

from __future__ import annotations

import logging
import traceback

from llm_proxy_mw.errors import StartupError
from llm_proxy_mw.logging_filters import StartupErrorLine

REASON = "llm_proxy_mw: cannot start: the [store] does not open (sqlite:///x.db: locked)"


def traceback_of(error: BaseException) -> str:
    try:
        raise error
    except BaseException:
        return traceback.format_exc()


def record(msg: object, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, args, None)


def test_a_startup_error_traceback_becomes_its_reason() -> None:
    logged = record(traceback_of(StartupError(REASON)))
    assert StartupErrorLine().filter(logged)
    assert logged.getMessage() == REASON


def test_other_tracebacks_and_records_pass_unchanged() -> None:
    other = traceback_of(RuntimeError("boom"))
    for msg, args in ((other, ()), ("Started server process [%d]", (42,)), (ValueError(), ())):
        logged = record(msg, *args)
        before = logged.getMessage()
        assert StartupErrorLine().filter(logged)
        assert logged.getMessage() == before
