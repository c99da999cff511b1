"""The side-by-side comparison: llm_proxy_mw beside the aiohttp floor and LiteLLM's proxy.

``make bench-compare`` (``python -m benchmarks.compare``) serves the examples app, the proxy
under a standard ``Mount`` at ``/llm``, and the aiohttp passthrough floor as the end-to-end
benchmark serves them, and with ``LITELLM=1`` also LiteLLM's proxy from ``.bench/litellm-venv``
(installed there on first use, never into the project's venv). Each contender meets the same
loads in the same rounds, so their figures compare within the run.
"""
