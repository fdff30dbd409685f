# Quick start: `make run` (sandbox + Airflow UI) and `make test`. Both bootstrap a fresh machine.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Where the policy, include/ and the default sandbox are (see plugins/continuity/policy/project.py).
export CONTINUITY_PROJECT ?= $(CURDIR)

.PHONY: bootstrap run run-distributed test test-fast test-coverage bench sandbox-up sandbox-down sandbox-status clean

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	$(BIN)/continuity run

# CeleryExecutor, a PostgreSQL metadata database, Redis as broker and a worker per region (README).
run-distributed: bootstrap
	$(BIN)/continuity run --distributed

# Every tier (tests/unit, component, integration, system, perf; see tests/conftest.py) on three workers: the tests
# wait on servers far more than they compute (CPU about one core of two on average with two workers), so a third
# worker overlaps the waits (make test 25 min -> 22.5 min measured). A module stays on one worker with its
# fixtures; the system tier's stacks (each a whole Airflow, one per folder) go first, each on a worker of its own
# (tests/conftest.py: xdist_scope). XDIST_ARGS= runs everything in this process. Tests marked `alone` (a fresh
# `continuity run` must be green: its health monitor measures this machine's latency) run afterwards, by
# themselves. Exit status 5 is "no test selected" (e.g. PYTEST_ARGS="-k health" leaves one part empty).
# The `alone` part collects only ALONE_PATHS, where those tests live (collecting every tier imports every test module:
# 11 s against 2 s), unless PYTEST_ARGS names what to run (tests/unit/test_tiers.py keeps ALONE_PATHS true).
XDIST_ARGS ?= -n 3 --dist loadscope --no-loadscope-reorder
ALONE_PATHS := tests/system
test: bootstrap
	$(BIN)/pytest $(XDIST_ARGS) -m "not alone" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -m alone $(if $(strip $(PYTEST_ARGS)),$(PYTEST_ARGS),$(ALONE_PATHS)) || [ $$? -eq 5 ]

# The unit tier: no socket, no subprocess; what a change is checked against first.
test-fast: bootstrap
	$(BIN)/pytest tests/unit -n 2 $(PYTEST_ARGS)

# The unit tier with the core's coverage (pytest-cov): what the decisions' tests reach.
# The last line: the core alone (no Airflow layer, no CLI), where the decisions live.
AIRFLOW_LAYER := */operators/*,*/hooks/*,*/sensors/*,*/triggers/*,*/notifiers/*,*/callbacks/*,*/cli/*
test-coverage: bootstrap
	$(BIN)/pytest tests/unit -n 2 --cov=continuity --cov-report=term-missing:skip-covered $(PYTEST_ARGS)
	@printf 'the core alone (no Airflow layer, no CLI): '; $(BIN)/coverage report --omit="$(AIRFLOW_LAYER)" | tail -1

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
