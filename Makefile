# The two commands of the README:
#   make demo   set everything up and run `slatune up --demo-load`: the embedded default fleet, the
#               collectors, the reconciler, the SLO controller and the API, with a shifting demo trace
#   make test   set everything up and run the whole test suite (what .ci/run calls)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

.PHONY: setup allocator services migrations demo test lint unit integration bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (the bundled Triton's python backend stub is built per Python version)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

# The tests use the machine's PostgreSQL on 127.0.0.1:5432 (the production store): start it if it is down.
# They also start their own Prometheus and Alertmanager (tests/promstack.py) on free ports: install the
# Debian packages if missing, with a policy-rc.d that keeps their postinst from starting the daemons.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { \
	  echo "starting PostgreSQL"; pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; }
	@pg_isready -h 127.0.0.1 -p 5432
	@command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null || { \
	  echo "installing prometheus, prometheus-alertmanager"; rcd=/usr/sbin/policy-rc.d; own=; \
	  test -e $$rcd || { own=1; printf '#!/bin/sh\nexit 101\n' >$$rcd; chmod 755 $$rcd; }; \
	  inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    prometheus prometheus-alertmanager; }; \
	  inst || { apt-get update -q && inst; }; status=$$?; test -z "$$own" || rm -f $$rcd; \
	  for d in prometheus prometheus-alertmanager; do \
	    test ! -x /etc/init.d/$$d || /etc/init.d/$$d stop >/dev/null 2>&1 || true; done; \
	  exit $$status; }

# tritonserver runs on jemalloc (runtime/server.py, ALLOCATOR): with glibc's malloc a use-after-free
# in its trace API now and then kills it. Install Debian's libjemalloc2 if the loader does not know it.
allocator:
	@/sbin/ldconfig -p | grep -q 'libjemalloc\.so\.2 ' || { echo "installing libjemalloc2"; \
	  inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libjemalloc2; }; \
	  inst || { apt-get update -q && inst; }; }

demo: setup allocator
	$(BIN)/slatune up --demo-load

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup services allocator
	$(BIN)/pytest -q tests/integration

# The migrations reach the models' schema: upgrade a scratch database to head, then `alembic check`
# (the migration tests do the same on SQLite and PostgreSQL, and down to base).
migrations: setup
	@tmp=$$(mktemp -d) && export SLATUNE_DATABASE_URL=sqlite:///$$tmp/check.db && \
	  $(BIN)/alembic upgrade head && $(BIN)/alembic check; status=$$?; rm -rf $$tmp; exit $$status

test: lint services allocator migrations
	$(BIN)/pytest -q -ra --durations=10

bench: setup services allocator
	$(BIN)/python -m benchmarks.reconfigure
	$(BIN)/python -m benchmarks.reconfigure --guard-timeout-ms 750
	$(BIN)/python -m benchmarks.collect
	$(BIN)/python -m benchmarks.tune
	$(BIN)/python -m benchmarks.api

clean:
	rm -rf $(VENV) .slatune .mypy_cache .ruff_cache .pytest_cache
