# DPAMT Explorer. The README's two commands: `make run` and `make test`.
# Both work on a fresh machine: they create .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SAMPLE ?= td_lifecycle
PORT   ?= 8501

.PHONY: run test lint unit browser chromium bench loadtest fuzz goldens clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## make run: install and start the app on the default sample
run: $(STAMP)
	$(VENV)/bin/streamlit run streamlit_app.py --server.port $(PORT) -- --sample $(SAMPLE)

## Chromium for the browser tests comes from Debian (playwright cannot download one here)
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi
	@command -v chromium >/dev/null && chromium --version

lint: $(STAMP)
	$(VENV)/bin/ruff check explorer app_pages tests tools streamlit_app.py
	$(VENV)/bin/ruff format --check explorer app_pages tests tools streamlit_app.py
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q -n 2 -m 'not browser and not slow'

browser: $(STAMP) chromium
	$(PY) -m pytest -q -m browser -p no:xdist

## make test: everything CI runs (lint, unit, AppTest, browser)
test: $(STAMP) chromium lint
	$(PY) -m pytest -q -n 2 -m 'not browser and not slow'
	$(PY) -m pytest -q -m browser -p no:xdist

bench: $(STAMP)
	$(PY) -m explorer.bench

fuzz: $(STAMP)
	$(PY) -m pytest -q -m slow

## make loadtest: 20 browser sessions for 60 s against one server (docs/reliability.md)
loadtest: $(STAMP) chromium
	$(PY) tools/loadtest.py --sessions 20 --seconds 60

goldens: $(STAMP)
	$(PY) -m pytest -q tests/test_samples.py --update-goldens

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
