# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest workers for `make test`: two took 13 min on 2 cores (BENCHMARKS.md, "Test suite"); WORKERS=1: one process
WORKERS ?= 2

.PHONY: demo test lint install clean bench browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	# the tests' reference AutoAttack (not used by hw4). Not an extra: every torchattacks release
	# pins requests~=2.25.1, which Ray's own dependencies (requests>=2.33) rule out; it needs
	# nothing else that the project does not already install
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint browser
	$(PY) -m pytest -q $(if $(filter 1,$(WORKERS)),,-n $(WORKERS)) --durations=15  # the slowest tests, in view

# tests/test_web.py drives Debian's Chromium through Playwright (which downloads no browser):
# installed here when missing, so `make test` passes on a fresh machine as it is
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    echo "installing Debian's chromium for the browser tests"; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

demo: $(STAMP)
	$(PY) -m jobs.demo

# Performance against plain PyTorch and diffusers (about 15 minutes on 2 CPU cores); the tables
# in docs/performance.md are regenerated from bench/measurements/*.json at the end.
bench: $(STAMP)
	$(PY) -m bench.ray_overhead
	$(PY) -m bench.unet_speed
	$(PY) -m bench.samplers
	$(PY) -m bench.memory
	$(PY) -m bench.tables

clean:
	rm -rf $(VENV) results
