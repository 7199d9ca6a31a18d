# One command each: `make demo` (set up + run the demo), `make test` (set up + run every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-run test-tools lint venv tools clean bench

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
## system tests (real systemd in systemd-nspawn; root). It sets itself up first: as root on
## Debian it installs the missing tools (the script .ci/run uses; a no-op in well under a second
## when all are there, the llama-server build cached); as another user it names the packages to
## install, then runs the tests, which skip what needs a missing tool and say why (under
## CI=true a missing tool is an error). The venv comes after the tools: python3-venv is one.
## GPU tests (marker gpu) run on a machine with an NVIDIA GPU: see tests/gpu/README.md.
test: test-tools
	@$(MAKE) --no-print-directory test-run

test-tools:
	@scripts/install-test-tools.sh --auto

test-run: $(STAMP)
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
