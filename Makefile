# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-installed-stamp
LITELLM_VERSION ?= 1.108.7
LITELLM_VENV := .bench/litellm-venv
# The CLI agents that tests/test_cli_agents.py runs against the proxy, from npm, pinned.
CLAUDE_CODE_VERSION ?= 2.1.197
CODEX_VERSION ?= 0.171.0
CLI_AGENTS := .cli-agents
CLI_AGENTS_STAMP := $(CLI_AGENTS)/.installed-$(CLAUDE_CODE_VERSION)-$(CODEX_VERSION)
# The official Node SDKs that tests/test_node_sdks.py runs, pinned by tests/node/package-lock.json.
NODE_SDKS := tests/node
NODE_SDKS_STAMP := $(NODE_SDKS)/node_modules/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install bytecode demo test lint typecheck pytest docs bench bench-compare cli-agents node-sdks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# An editable install compiles nothing (pip compiles the dependencies): our bytecode, written
# here, is start-up saved, and read even where PYTHONDONTWRITEBYTECODE forbids writing it.
bytecode: $(STAMP)
	$(PY) -m compileall -q llm_proxy_mw examples

demo: bytecode
	$(VENV)/bin/uvicorn examples.app:app --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Claude Code and Codex CLI (native binaries inside their npm packages) in a folder of their
# own, with no package.json or lock file: `npm` needs only the registry.
$(CLI_AGENTS_STAMP):
	rm -rf $(CLI_AGENTS)
	npm install --prefix $(CLI_AGENTS) --no-save --no-package-lock --no-audit --no-fund \
		--loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) @openai/codex@$(CODEX_VERSION)
	touch $@

cli-agents: $(CLI_AGENTS_STAMP)

# `npm ci` installs exactly what the lock file names (it empties node_modules first).
$(NODE_SDKS_STAMP): $(NODE_SDKS)/package.json $(NODE_SDKS)/package-lock.json
	npm ci --prefix $(NODE_SDKS) --no-audit --no-fund --loglevel=error
	touch $@

node-sdks: $(NODE_SDKS_STAMP)

pytest: $(STAMP) $(CLI_AGENTS_STAMP) $(NODE_SDKS_STAMP)
	$(PY) -m pip check
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=90

# The documentation site (docs/, mkdocs.yml) into site/; --strict: any warning fails the build.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test: lint docs pytest

bench: bytecode
	$(PY) -m benchmarks

# LiteLLM's proxy, only for `make bench-compare LITELLM=1`: in a venv of its own, never in .venv.
$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'

# The side-by-side comparison with the aiohttp floor, and LiteLLM's proxy with LITELLM=1;
# QUICK=1 is a smoke test (a minute, not figures).
COMPARE_ARGS := $(if $(filter 1,$(QUICK)),--quick)
ifeq ($(LITELLM),1)
bench-compare: $(LITELLM_VENV)/bin/litellm
COMPARE_ARGS += --litellm $(LITELLM_VENV)/bin/litellm
endif
bench-compare: bytecode
	$(PY) -m benchmarks.compare $(COMPARE_ARGS)

clean:
	rm -rf $(VENV) .bench $(CLI_AGENTS) $(NODE_SDKS)/node_modules site .coverage .pytest_cache .mypy_cache .ruff_cache htmlcov test-artifacts
