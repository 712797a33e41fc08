# make run: set up and serve on the embedded SQLite default. make test: set up and run every test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export LEDGER_TEST_PG ?= postgresql://postgres@127.0.0.1:5432/ledger_test

.PHONY: setup run demo test lint bench services clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# make run signs nothing itself: this secret (unless STRIPE_WEBHOOK_SECRET is set) is what a local
# `billing-ledger trigger` signs with, so the local loop works on a fresh machine.
LOCAL_WEBHOOK_SECRET ?= whsec_local_development_only

run: setup
	LEDGER_DEMO_SIGNIN=true STRIPE_WEBHOOK_SECRET=$${STRIPE_WEBHOOK_SECRET:-$(LOCAL_WEBHOOK_SECRET)} \
		$(VENV)/bin/billing-ledger serve

demo: setup
	$(VENV)/bin/billing-ledger demo

services:
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-chromium.sh

test: setup services
	$(PY) -m pytest -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check billing_ledger tests bench
	$(VENV)/bin/ruff format --check billing_ledger tests bench
	$(VENV)/bin/mypy

BENCHES ?= ingest read project replay freshness soak history client

bench: setup services
	@for name in $(BENCHES); do echo "== bench/$$name.py"; PYTHONPATH=. $(PY) bench/$$name.py || exit 1; done

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis .schemathesis
