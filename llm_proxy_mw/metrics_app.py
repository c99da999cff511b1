"""``MetricsApp``: ``/metrics``, the Prometheus text exposition of the proxy's metrics.

Access control is the caller's job: the proxy serves it behind its ``AdminGate``.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from llm_proxy_mw.proxy_metrics import ProxyMetrics, exposition

__all__ = ["MetricsApp"]


class MetricsApp:
    """ASGI app serving the exposition of ``metrics`` (any method). Under Prometheus
    multiprocess mode, pass ``PROMETHEUS_MULTIPROC_DIR`` as ``multiprocess_dir``: the counters
    of every worker are collected from there (see ``exposition``)."""

    def __init__(self, metrics: ProxyMetrics, *, multiprocess_dir: str | None = None) -> None:
        self.metrics = metrics
        self.multiprocess_dir = multiprocess_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, content_type = exposition(self.metrics, multiprocess_dir=self.multiprocess_dir)
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
