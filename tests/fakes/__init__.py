"""Test doubles (fake LLM provider, real-uvicorn server harness) shared by the test suite."""
