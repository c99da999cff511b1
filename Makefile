# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install bytecode demo test lint typecheck pytest bench clean

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
	$(VENV)/bin/uvicorn examples.app:app --host $(HOST) --port $(PORT) --ws none

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pip check
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=90

test: lint pytest

bench: bytecode
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .coverage .pytest_cache .mypy_cache .ruff_cache htmlcov test-artifacts
