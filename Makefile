# The two set-up commands of the README: `make book` and `make test`.
# Both create .venv when missing and install everything from requirements.txt.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed
# nbgrader shells out to alembic: the environment's bin/ must come first on PATH.
export PATH := $(BIN):$(PATH)
# pip on these machines warns about index folders it cannot read; the noise hides real errors.
PIP_FILTER := { grep -v 'is ignored: it is neither a file nor a directory' || true; }
PYTEST_WORKERS ?= 2

.PHONY: setup book test bench assignments clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt 2>&1 | $(PIP_FILTER)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_FILTER)
	touch $@

setup: $(STAMP)

book: $(STAMP)
	$(BIN)/python -m segutils info

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf _build .pytest_cache
