# water-infrastructure: `make demo` and `make test` are the two commands a newcomer needs.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
DBT_DIR := dbt_project
export DBT_PROFILES_DIR := $(CURDIR)
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# Podman reads the project's settings (runc, cgroupfs, ulimits; deploy/containers/containers.conf).
export CONTAINERS_CONF ?= $(CURDIR)/deploy/containers/containers.conf

.PHONY: install emulator demo dashboard test test-fast lint format docs serve deploy worker bench bench-cycle containers containers-test clean

# The offline BigQuery emulator the tests run the BigQuery target on. It lives in a venv of
# its own: it needs duckdb 1.5 while the project pins duckdb 2.0 (docs/bigquery.md).
EMULATOR_VENV  ?= .venv-bigquery-emulator
EMULATOR_PIN   := crucible-emulator[server]==0.1.0a2
EMULATOR_STAMP := $(EMULATOR_VENV)/.installed-0.1.0a2

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(EMULATOR_STAMP):
	@test -x $(EMULATOR_VENV)/bin/python || $(PY) -m venv $(EMULATOR_VENV)
	$(EMULATOR_VENV)/bin/pip install --quiet --quiet --disable-pip-version-check '$(EMULATOR_PIN)'
	@rm -f $(EMULATOR_VENV)/.installed-*
	@touch $@

emulator: $(EMULATOR_STAMP)  ## the BigQuery emulator used by the tests (its own venv)

install: $(STAMP) $(EMULATOR_STAMP)  ## create .venv and install the pinned stack (+ the emulator venv)

demo: install  ## generate a network, load it, run a cycle on DuckDB
	$(BIN)/water demo

dashboard: install  ## the operations dashboard on http://127.0.0.1:8501 (read-only; docs/dashboard.md)
	$(BIN)/water dashboard

test: install  ## the whole suite (needs PostgreSQL and Redis on 127.0.0.1); the 15 slowest tests listed
	$(BIN)/pytest -q --durations=15

test-fast: install  ## pure functions and file checks only: no database, no dbt, no server (seconds)
	$(BIN)/pytest -q tests/fast

lint: install  ## ruff, ruff format, the import direction (.importlinter), sqlfluff on the dbt models
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/sqlfluff lint dbt_project/models --processes 0 --disable-progress-bar

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install  ## build the dbt docs site and serve it on http://127.0.0.1:8080
	cd $(DBT_DIR) && ../$(BIN)/dbt docs generate && ../$(BIN)/dbt docs serve --host 127.0.0.1 --port 8080 --no-browser

serve: install  ## schedule and serve every Prefect deployment (starts a local server if PREFECT_API_URL is unset)
	$(BIN)/water serve

# `prefect deploy --all` against the server in PREFECT_API_URL; then run `make worker`.
deploy: install
	$(BIN)/prefect work-pool inspect water-local >/dev/null 2>&1 || $(BIN)/prefect work-pool create water-local --type process
	$(BIN)/prefect --no-prompt deploy --all

worker: install  ## a process worker for the deployments registered by `make deploy`
	$(BIN)/prefect worker start --pool water-local

bench-cycle: install  ## incremental cycle latency, 500 nodes (minutes; see docs/operations.md)
	$(BIN)/python benchmarks/cycle_latency.py

bench: install  ## every benchmark (tens of minutes; see README "Performance")
	$(BIN)/python benchmarks/backfill.py
	$(BIN)/python benchmarks/backfill.py --postgres --nodes 40 --days 14
	$(BIN)/python benchmarks/quality_gates.py
	$(BIN)/python benchmarks/ml_quality.py
	$(BIN)/python benchmarks/leak_detection.py
	$(BIN)/python benchmarks/cycle_latency.py
	$(BIN)/python benchmarks/bigquery_cost.py
	$(BIN)/python benchmarks/api_load.py

containers:  ## build the images with podman (a local Debian base first when missing; README "Containers")
	deploy/containers/build.sh

# Not part of `make test` (testpaths is tests/); .ci/run runs it after the suite.
containers-test: install  ## build what is missing, run the compose stack end to end, tear it all down
	$(BIN)/pytest -q -p no:cacheprovider deploy/tests

clean:
	rm -rf $(DBT_DIR)/target $(DBT_DIR)/logs data/warehouse.duckdb data/landing
