# The front door. Needs Python 3.11+, Java 17+ and Maven (Kafka comes from Maven Central).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KAFKA_PORT ?= 9092
BENCH_PORT ?= 19192
DURATION ?= 180
MINUTES ?= 60
PYTEST_ARGS ?=

.PHONY: help venv demo test test-unit test-integration lint format bench soak kafka-up kafka-down clean

help:
	@echo "make demo        set up everything and run the pipeline end to end (DURATION=$(DURATION)s)"
	@echo "make test        set up and run every test (starts and stops its own broker)"
	@echo "make lint        ruff (lint + format check) and mypy"
	@echo "make bench       run the benchmarks against a local broker"
	@echo "make soak        the pipeline for MINUTES=$(MINUTES) at 1,000 events/s, restarts, report"
	@echo "make kafka-up    start the local broker on 127.0.0.1:$(KAFKA_PORT) (KAFKA_PORT=...)"
	@echo "make kafka-down  stop it"

$(STAMP): pyproject.toml setup.py services/features/_native.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

kafka-up: venv
	$(BIN)/streamml kafka up --port $(KAFKA_PORT)

kafka-down: venv
	$(BIN)/streamml kafka down

demo: venv
	$(BIN)/streamml demo run --duration $(DURATION)

# The session fixture starts one broker on a free port and stops it at the end
# (or uses KAFKA_BOOTSTRAP_SERVERS when it is set).
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

test-integration: venv
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	STREAMML_KAFKA_DIR=.kafka-bench $(BIN)/streamml kafka up --port $(BENCH_PORT)
	status=0; \
	for b in benchmarks/*.py; do \
	  case $$b in */_*|*/soak.py) continue;; esac; \
	  echo "== $$b"; \
	  KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(BENCH_PORT) $(BIN)/python $$b || status=1; \
	done; \
	STREAMML_KAFKA_DIR=.kafka-bench $(BIN)/streamml kafka down --wipe; \
	exit $$status

# Its own broker (it restarts it); the run directory is printed and kept (outside the repo).
soak: venv
	$(BIN)/python -m benchmarks.soak --minutes $(MINUTES)

clean:
	-$(BIN)/streamml kafka down
	rm -rf $(VENV) .kafka .kafka-bench .pytest_cache .mypy_cache .ruff_cache
