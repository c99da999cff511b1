"""Test doubles shared by the test suite, one of each: the fake LLM provider (``provider``),
real uvicorn and redis-server on loopback (``servers``, ``redis_server``), a recording
upstream transport (``transports``), a fake clock (``clock``), and stopping the processes
tests start (``processes``). The end-to-end fixtures built on them are in ``conftest.py``.
"""
