# frieze: `make demo` and `make test` are all a newcomer needs; both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-heavy bench lint typecheck lock clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m frieze.demo

test: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not heavy" $(PYTEST_ARGS)

test-heavy: setup
	$(PY) -m pytest -m heavy $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/frieze bench repo

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
