# One command each: `make demo` (set up + run the demo), `make test` (set up + run every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv tools clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

## The demo: the simulator (a stand-in for Ollama) + the daemon; Ctrl-C stops it.
demo: $(STAMP)
	$(VENV)/bin/ollama-watchdog demo

## Real tools the integration and system tests use (Debian; needs root).
tools:
	scripts/install-test-tools.sh

## Every test: lint, types, unit, integration (real prometheus/promtool/logrotate/nginx) and
## system tests (real systemd in systemd-nspawn; root). Missing tools skip locally, fail in CI.
## GPU tests (marker gpu) run on a machine with an NVIDIA GPU: see tests/gpu/README.md.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy --strict src
	$(PY) -m pytest -m "not gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy --strict src

bench: $(STAMP)
	$(PY) benchmarks/scrape.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
