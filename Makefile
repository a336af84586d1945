# `make test` and `make demo` work on a fresh machine: they create .venv when it is missing
# and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-slow lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,threatexchange]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check protocol node tests bench
	$(BIN)/mypy --strict protocol

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/hashmesh demo

bench: $(STAMP)
	$(BIN)/python bench/protocol.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
