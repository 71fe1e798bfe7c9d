# One entry point for people and CI. `make run` starts the gateway with its embedded defaults;
# `make check` runs format check, lint, types, import contracts and the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   ?= var

.PHONY: run test check format format-check lint types contracts system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aigc-gateway serve --dev --data-dir $(DATA)

system-deps:
	@scripts/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/pytest -q -ra

format:
	$(BIN)/ruff format src tests tests_engines bench
	$(BIN)/ruff check --fix src tests tests_engines bench

format-check: $(STAMP)
	$(BIN)/ruff format --check src tests tests_engines bench

lint: $(STAMP)
	$(BIN)/ruff check src tests tests_engines bench

types: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

check: format-check lint types contracts test

bench: $(STAMP)
	$(BIN)/python bench/lifecycle/run.py

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache

# bench/proxy: the gateway's proxy against configurable-http-proxy and nginx (needs wrk, nginx, Node.js).
.PHONY: bench-proxy
bench-proxy: $(STAMP)
	@test -d bench/proxy/node_modules || npm ci --prefix bench/proxy --no-audit --no-fund
	$(BIN)/python bench/proxy/run.py

# bench/accounting: usage reports over a year of ledger (1.2 M rows) on SQLite and PostgreSQL
# (needs the postgresql package: scripts/system-deps.sh).
.PHONY: bench-accounting
bench-accounting: $(STAMP)
	$(BIN)/python bench/accounting/run.py

# check-engines: real third-party engines driven through the gateway's proxy (tests_engines/, not
# part of `make check`: the install is several GB). InvokeAI goes into its own venv under
# .engines/; torch 2.14.1 is pinned because it satisfies InvokeAI (>=2.7, <3) and torchvision
# 0.29.1 pairs with it (a CUDA build; it runs on the CPU where there is no GPU).
.PHONY: check-engines
ENGINES          ?= .engines
INVOKEAI_VERSION ?= 6.14.2
INVOKEAI_VENV    := $(ENGINES)/invokeai/venv
INVOKEAI_STAMP   := $(INVOKEAI_VENV)/.installed-$(INVOKEAI_VERSION)

$(INVOKEAI_STAMP):
	$(PYTHON) -m venv $(INVOKEAI_VENV)
	$(INVOKEAI_VENV)/bin/pip install -q --disable-pip-version-check \
	  torch==2.14.1 torchvision==0.29.1 invokeai==$(INVOKEAI_VERSION)
	touch $@

check-engines: $(STAMP) system-deps $(INVOKEAI_STAMP)
	AIGC_TEST_ENGINES=$(CURDIR)/$(ENGINES) $(BIN)/pytest -q -ra tests_engines

# bench/runtime: readiness time-out, stop and SIGKILL escalation, OIDC provider start (the speed
# goals that were once wall-clock bounds in tests).
.PHONY: bench-runtime
bench-runtime: $(STAMP)
	$(BIN)/python bench/runtime/run.py
