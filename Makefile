# On a fresh machine with Python 3.11+ and make:
#   make demo   one real pingback through a local proxy to a local Webmention receiver, step by step
#   make run    serve on http://127.0.0.1:8000 (make run PORT=9000 for another port)
#   make test   every check: format, lint, types, tests (about a minute; make test-all adds the slow ones)
#   make bench  the speed benchmark (bench/README.md; a few minutes, needs wrk; not part of test)
PYTHON ?= python3
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo test test-all test-root lint bench clean

$(BIN)/.installed: pyproject.toml requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit("pingforward needs Python 3.11+, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e '.[dev]'
	# The exact pins as wheels on this machine, so that tests install the project into fresh
	# environments (as a container build or pipx does) without the package registry.
	$(BIN)/python -m pip wheel --quiet -r requirements.txt setuptools -w $(VENV)/wheels
	touch $@

run: $(BIN)/.installed
	$(BIN)/pingforward serve --host 127.0.0.1 --port $(PORT)

demo: $(BIN)/.installed
	$(BIN)/pingforward demo

lint: $(BIN)/.installed
	$(BIN)/ruff format --check pingforward tests
	$(BIN)/ruff check pingforward tests
	$(BIN)/mypy

# Four pytest workers on the cores (most tests wait on sockets), each file on one of them. Tests marked
# slow (real process trees, fresh installs) and root (private network namespaces) are left to the targets
# below, which CI runs too.
test: lint
	$(BIN)/pytest -n 4 --dist loadfile -m "not root and not slow"

# Every test but the root ones, with branch coverage, which must reach pyproject.toml's fail_under.
test-all: $(BIN)/.installed
	$(BIN)/pytest -n 4 --dist loadfile -m "not root" --cov --cov-report=term

test-root: $(BIN)/.installed
	$(BIN)/pytest -m root

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
