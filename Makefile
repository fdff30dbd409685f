# Quick start: `make run` (sandbox + Airflow UI) and `make test`. Both bootstrap a fresh machine.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Where the policy, include/ and the default sandbox are (see plugins/continuity/policy/project.py).
export CONTINUITY_PROJECT ?= $(CURDIR)

.PHONY: bootstrap run run-distributed test test-fast bench sandbox-up sandbox-down sandbox-status clean

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	$(BIN)/continuity run

# CeleryExecutor, a PostgreSQL metadata database, Redis as broker and a worker per region (README).
run-distributed: bootstrap
	$(BIN)/continuity run --distributed

# Two workers (the machine's cores): a module stays on one worker with its fixtures; the modules that run
# an Airflow scheduler share one worker and go first (tests/conftest.py: pytest_xdist_make_scheduler), so
# two never start at once. XDIST_ARGS= runs everything in this process. Tests marked `alone` (a fresh
# `continuity run` must be green: its health monitor measures this machine's latency) run afterwards, by
# themselves. Exit status 5 is "no test selected" (e.g. PYTEST_ARGS="-k health" leaves one part empty).
XDIST_ARGS ?= -n 2 --dist loadscope --no-loadscope-reorder
test: bootstrap
	$(BIN)/pytest $(XDIST_ARGS) -m "not alone" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: bootstrap
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

bench:
	@CONTINUITY_BENCH=1 scripts/bootstrap.sh
	$(BIN)/python bench/run.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/tools.py
	$(BIN)/python bench/pgbackrest.py
	$(BIN)/python bench/switchover.py
	$(BIN)/python bench/switchover_scheduler.py
	$(BIN)/python bench/objects.py
	$(BIN)/python bench/wal_push.py
	$(BIN)/python bench/catalog.py
	$(BIN)/python bench/detection.py --consecutive 1
	$(BIN)/python bench/detection.py --consecutive 3
	$(BIN)/python bench/region_loss.py --runs 3

sandbox-up: bootstrap
	$(BIN)/continuity sandbox up

sandbox-down:
	$(BIN)/continuity sandbox down

sandbox-status:
	$(BIN)/continuity sandbox status

clean: sandbox-down
	rm -rf .sandbox .pytest_cache
