"""Streams between Chat Completions and Messages, one translator per direction, each named
for what it reads and what it writes."""

from __future__ import annotations

from llm_proxy_mw.translate._chat_chunks_to_messages import ChatChunksToMessages
from llm_proxy_mw.translate._messages_events_to_chat import MessagesEventsToChat

__all__ = ["ChatChunksToMessages", "MessagesEventsToChat"]
