"""Translation between Chat Completions, Messages and Responses (see ``_codec.py``)."""
