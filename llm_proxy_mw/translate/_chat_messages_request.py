"""Requests between Chat Completions and Messages, both ways: one module each
(``_chat_to_messages_request.py``, ``_messages_to_chat_request.py``), named here together."""

from __future__ import annotations

from llm_proxy_mw.translate._chat_to_messages_request import chat_request_to_messages
from llm_proxy_mw.translate._messages_to_chat_request import messages_request_to_chat

__all__ = ["chat_request_to_messages", "messages_request_to_chat"]
