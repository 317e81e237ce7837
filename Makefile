# DPAMT Explorer. The README's two commands: `make run` and `make test`.
# Both work on a fresh machine: they create .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Two install stamps: `make run` installs what running needs (the app and the engine's compiler),
# the test targets add the test tools on top. A new pyproject.toml makes both stale.
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-run-$(SUM)
TSTAMP := $(VENV)/.installed-test-$(SUM)
SAMPLE ?= td_lifecycle
PORT   ?= 8501

.PHONY: run test lint unit browser chromium bpftrace bench loadtest fuzz goldens clean native

# The engine compiled with mypyc (explorer/model/native.py): rebuilt when a model source changes;
# without a C compiler the build says so and the pure Python engine runs (same results, slower).
# The capture path (conformance importer and conform) is a second group, stamped apart: editing
# conform.py rebuilds it alone (explorer.build_native builds whichever group is stale). It also
# depends on the named tuples it reads by position (the capture's Record, the engine's Effect).
# The search's build (DPAMT_PURE=search: the search and the engine's modules without kernel
# generators, compiled; what `explore` runs) is a third group, over the model and the search.
NATIVE := explorer/model/_native/SOURCES explorer/conformance/_native/SOURCES \
  explorer/model/_native_search/SOURCES
MODEL_SOURCES := $(wildcard explorer/model/*.py)
CAPTURE_SOURCES := explorer/conformance/importer.py explorer/conformance/conform.py \
  explorer/ingest/capture.py explorer/model/records.py

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[native]'
	rm -f $(VENV)/.installed-run-*
	touch $@

$(TSTAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[native,test]'
	rm -f $(VENV)/.installed-test-*
	touch $@

explorer/model/_native/SOURCES: $(MODEL_SOURCES) explorer/build_native.py | $(STAMP)
	$(PY) -m explorer.build_native

explorer/conformance/_native/SOURCES: $(CAPTURE_SOURCES) explorer/build_native.py | $(STAMP)
	$(PY) -m explorer.build_native

explorer/model/_native_search/SOURCES: $(MODEL_SOURCES) explorer/interleavings/search.py \
  explorer/build_native.py | $(STAMP)
	$(PY) -m explorer.build_native

native: $(NATIVE)

## make run: install and start the app on the default sample
run: $(STAMP) $(NATIVE)
	$(VENV)/bin/streamlit run streamlit_app.py --server.port $(PORT) -- --sample $(SAMPLE)

## Chromium for the browser tests comes from Debian (playwright cannot download one here)
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi
	@command -v chromium >/dev/null && chromium --version

## bpftrace checks tools/capture/dpamt.bt in the tests (bpftrace -d: parse only); best effort:
## without it the test of the script's source against docs/capture.md still runs
bpftrace:
	@if ! command -v bpftrace >/dev/null 2>&1; then \
	  echo "Installing Debian's bpftrace to check tools/capture/dpamt.bt"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bpftrace >/dev/null) \
	    || echo "bpftrace could not be installed: its check of the script will be skipped"; \
	fi

lint: $(TSTAMP)
	$(VENV)/bin/ruff check explorer app_pages tests tools streamlit_app.py
	$(VENV)/bin/ruff format --check explorer app_pages tests tools streamlit_app.py
	$(VENV)/bin/mypy

unit: $(TSTAMP) $(NATIVE) bpftrace
	$(PY) -m pytest -q -n 2 -m 'not browser and not slow'

browser: $(TSTAMP) $(NATIVE) chromium
	$(PY) -m pytest -q -m browser -p no:xdist

## make test: everything CI runs (lint, unit, AppTest, browser)
test: $(TSTAMP) $(NATIVE) chromium bpftrace lint
	$(PY) -m pytest -q -n 2 -m 'not browser and not slow'
	$(PY) -m pytest -q -m browser -p no:xdist

bench: $(TSTAMP) $(NATIVE)
	$(PY) -m explorer.bench

fuzz: $(TSTAMP) $(NATIVE)
	$(PY) -m pytest -q -m slow

## make loadtest: 30 protocol-level sessions (no browser) for 60 s against one server, on the
## instant view (the default) and then the server-drawn one (docs/reliability.md)
loadtest: $(TSTAMP) $(NATIVE)
	$(PY) tools/loadtest.py --sessions 30 --seconds 60 --view instant
	$(PY) tools/loadtest.py --sessions 30 --seconds 60 --view server

goldens: $(TSTAMP)
	$(PY) -m pytest -q tests/test_samples.py --update-goldens

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts explorer/model/_native \
	  explorer/conformance/_native explorer/model/_native_search explorer/interleavings/_native_search
