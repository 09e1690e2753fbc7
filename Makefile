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

.PHONY: install demo test test-fast lint format docs serve deploy worker bench bench-cycle clean

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)  ## create .venv and install the pinned stack

demo: install  ## generate a network, load it, run a cycle on DuckDB
	$(BIN)/water demo

test: install  ## the whole suite (needs PostgreSQL and Redis on 127.0.0.1); the 15 slowest tests listed
	$(BIN)/pytest -q --durations=15

test-fast: install  ## pure functions and file checks only: no database, no dbt, no server (seconds)
	$(BIN)/pytest -q tests/fast

lint: install  ## ruff, ruff format, and sqlfluff on the dbt models (config: dbt_project/.sqlfluff)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
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
	WATER_LOCAL_TIMEZONE=$${WATER_LOCAL_TIMEZONE:-Europe/Rome} $(BIN)/prefect --no-prompt deploy --all

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
	$(BIN)/python benchmarks/api_load.py

clean:
	rm -rf $(DBT_DIR)/target $(DBT_DIR)/logs data/warehouse.duckdb data/landing
