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

.PHONY: setup system-packages book test bench assignments clean gpu-check

# The book build of `make book`, tests/test_book.py and .github/workflows/pages.yml. Strict: any warning,
# broken reference or failing cell fails it. Notebooks are executed through jupyter-cache
# (_build/.jupyter_cache): a warm build re-runs only the chapters whose code, or whose segutils, changed.
BOOK_BUILD := $(BIN)/jupyter-book build . -W -n --keep-going

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt 2>&1 | $(PIP_FILTER)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_FILTER)
	touch $@

setup: $(STAMP)

# Debian packages outside pip's reach: node/npm (the book's offline browser assets), chromium (browser
# tests), bubblewrap (the grading sandbox), postgresql (multi-writer gradebook tests). Installed only
# when missing and when we may (root with apt-get); otherwise the tests that need them say so and skip.
# package:command pairs: a command on PATH (or a PostgreSQL server binary) counts as installed.
SYSTEM_PACKAGES := nodejs:node npm:npm chromium:chromium bubblewrap:bwrap postgresql:initdb
system-packages:
	@missing=$$(for pair in $(SYSTEM_PACKAGES); do { command -v $${pair#*:} || compgen -G "/usr/lib/postgresql/*/bin/$${pair#*:}"; } >/dev/null || echo $${pair%%:*}; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:" $$missing; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "warning: could not install" $$missing "(the tests that need them will say so)" >&2; \
	else \
	  echo "missing Debian packages (install them to run every test):" $$missing >&2; \
	fi

# npm ci again only when the lock file changes (npm writes node_modules/.package-lock.json last).
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# warm_models.py trains the chapters' reference models into the segutils model cache first, outside
# any notebook cell (and its timeout); cached models cost nothing. `make book` and `make test` both run it.
WARM_MODELS := $(BIN)/python book/_ext/warm_models.py book/*.ipynb
book: $(STAMP) system-packages node_modules/.package-lock.json
	$(WARM_MODELS)
	$(BOOK_BUILD)

# Format and lint check first (ruff, settings in pyproject.toml): seconds, so a style slip fails before the
# long suite starts. `ruff format .` and `ruff check --fix .` repair most of what they report.
# Then the book's reference models, as `make book` trains them (seconds when cached): on a cold cache they
# train on idle cores, not beside the other test worker's grading corpora, which made a cold run an hour long.
test: $(STAMP) system-packages
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(WARM_MODELS)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

# One release per solutions/<id>/<id>.ipynb. nbgrader's output is byte-stable (no timestamps, cell ids
# kept from the source), so an unchanged source regenerates an identical release; tests/test_assignments.py
# fails when a committed release is out of date. The sources' {{ repo_url }}-style tokens are filled from
# course.toml on the way (nbgrader_config.py: segutils.grading.course_identity.FillCourseIdentity).
assignments: $(STAMP)
	$(BIN)/python -m segutils course check
	for source in solutions/*/*.ipynb; do \
	  id=$$(basename "$$(dirname "$$source")"); \
	  [ "$$source" = "solutions/$$id/$$id.ipynb" ] || continue; \
	  $(BIN)/nbgrader generate_assignment "$$id" --force --log-level=ERROR; \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf _build .pytest_cache test-artifacts

# Everything that needs a CUDA GPU (CUDA-only tests, the assignments' hidden tests on the GPU in float16/bfloat16,
# a GPU grading batch, training with mixed precision), with a summary; fails without a GPU. See tools/gpu_check.py.
gpu-check: $(STAMP)
	$(BIN)/python tools/gpu_check.py
