# `make test` and `make demo` work on a fresh machine: they create .venv when it is missing
# and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The node alone (no test, lint or integration extras): all that `make demo` needs.
RUNTIME_STAMP := $(VENV)/.runtime-stamp

.PHONY: test test-slow test-hma test-deploy lint demo bench fuzz clean

$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,threatexchange]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check hashmesh tests bench lists
	$(BIN)/ruff format --check hashmesh tests bench lists
	$(BIN)/mypy --strict hashmesh lists/make_negative_starter.py

test: lint
	$(BIN)/python -m pytest -q -n 3 --dist worksteal --durations=20 -m "not slow and not hma and not deploy"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# HMA (Meta's Hasher-Matcher-Actioner) subscribed to real nodes: installs PostgreSQL when
# missing (as root) and builds HMA's own venv in .hma-venv first; a missing piece fails.
test-hma: $(STAMP)
	$(BIN)/python tests/hma_setup.py
	HMA_REQUIRED=1 $(BIN)/python -m pytest -q -m hma tests/test_hma_e2e.py

# deploy/ against PyPI: every runtime dependency resolves to a binary wheel for the
# Containerfile's base (python:X.Y-slim has no compiler). The lints of deploy/ run in `make test`.
test-deploy: $(STAMP)
	$(BIN)/python -m pytest -q -m deploy tests/test_deploy_files.py

demo: $(RUNTIME_STAMP)
	$(BIN)/hashmesh demo
	@echo
	@echo "hashmesh is installed in $(abspath $(BIN)). To run it as plain 'hashmesh':"
	@echo "  source $(abspath $(BIN))/activate        (this shell only), or"
	@echo "  export PATH=\"$(abspath $(BIN)):\$$PATH\"   (add it to ~/.profile to keep it)"

bench: $(STAMP)
	$(BIN)/python bench/protocol.py

# Long fuzz run, started by hand (not part of `make test`): every parser and HTTP endpoint of
# tests/test_fuzz.py with the hypothesis profile `fuzz` (5,000 examples per target instead of
# ~100-200; tens of minutes on 2 cores). A failure prints the falsifying example and its blob.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
