"""CLI agents (Claude Code, Codex CLI) run against the proxy offline: a scripted model behind
it, the agents' own configuration, and request bodies recorded from them."""
