# The front door. Needs Python 3.11+, Java 17+ and Maven (Kafka comes from Maven Central).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KAFKA_PORT ?= 9092
REGISTRY_PORT ?= 8081
BENCH_PORT ?= 19192
DURATION ?= 180
MINUTES ?= 60
PYTEST_ARGS ?=

.PHONY: help venv kustomize demo test test-unit doctest test-integration test-containers lint format \
	bench soak image kafka-up kafka-down registry-up registry-down clean

help:
	@echo "make demo        set up everything and run the pipeline end to end (DURATION=$(DURATION)s)"
	@echo "make test        set up and run every test (two workers, each its own broker; TEST_WORKERS=2)"
	@echo "make lint        ruff (lint + format check) and mypy"
	@echo "make bench       run the benchmarks against a local broker"
	@echo "make test-containers  the image and the compose stack under podman (tests/containers)"
	@echo "make image       build the container image (and, with no registry, a Debian base and Kafka)"
	@echo "make soak        the pipeline for MINUTES=$(MINUTES) at 1,000 events/s, restarts, report"
	@echo "make kafka-up    start the local broker on 127.0.0.1:$(KAFKA_PORT) (KAFKA_PORT=...)"
	@echo "make kafka-down  stop it"
	@echo "make registry-up    start a local schema registry on 127.0.0.1:$(REGISTRY_PORT) (Apicurio)"
	@echo "make registry-down  stop it"

$(STAMP): pyproject.toml setup.py services/features/_native.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# kustomize renders k8s/ for tests/unit/deploy/test_k8s.py: kubectl's, one on PATH, or this
# one, built from the Go module proxy into ~/.cache/streamml/bin once.
KUSTOMIZE_VERSION ?= v5.5.0
STREAMML_CACHE ?= $(HOME)/.cache/streamml
kustomize:
	@command -v kustomize >/dev/null || test -x $(STREAMML_CACHE)/bin/kustomize \
	  || { command -v go >/dev/null || { echo "error: go not found: install Go to build kustomize" >&2; exit 2; }; \
	       echo "building kustomize $(KUSTOMIZE_VERSION) with go (once)"; \
	       GOBIN=$(STREAMML_CACHE)/bin go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }

kafka-up: venv
	$(BIN)/streamml kafka up --port $(KAFKA_PORT)

kafka-down: venv
	$(BIN)/streamml kafka down

registry-up: venv
	$(BIN)/streamml registry up --port $(REGISTRY_PORT)

registry-down: venv
	$(BIN)/streamml registry down

demo: venv
	$(BIN)/streamml demo run --duration $(DURATION)

# `make test` and `make test-integration` run in two phases: every test but those marked
# serial on TEST_WORKERS pytest-xdist workers (each worker a session of its own: its own
# broker on a free port, or all of them on KAFKA_BOOTSTRAP_SERVERS when it is set), then
# the serial ones alone (the soak; see docs/decisions/parallel-tests.md). TEST_WORKERS=0
# runs the first phase in one process. Both phases run even when the first fails; the exit
# code is non-zero when either did (5, "no tests", is fine for one of them: PYTEST_ARGS may
# select only one kind).
TEST_WORKERS ?= 2
define run_phases
	@status=0; ran=0; \
	for phase in parallel serial; do \
	  case $$phase in parallel) workers="-n $(TEST_WORKERS) --dist loadgroup";; *) workers="";; esac; \
	  echo "== $@: $$phase phase"; started=$$(date +%s); \
	  $(BIN)/python -m pytest --phase $$phase $$workers $(1) $(PYTEST_ARGS); rc=$$?; \
	  echo "== $@: $$phase phase took $$(( $$(date +%s) - started ))s (exit $$rc," \
	       "load average $$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"; \
	  case $$rc in 0) ran=1;; 5) ;; *) status=$$rc;; esac; \
	done; \
	if [ $$status -eq 0 ] && [ $$ran -eq 0 ]; then status=5; fi; \
	exit $$status
endef

# The docstrings' examples of libs/ and services/ run first (a separate run:
# --doctest-modules over tests/ would import its helper apps as modules).
test: venv doctest
	$(call run_phases,)

test-unit: venv doctest
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

doctest: venv
	$(BIN)/python -m pytest -p no:cacheprovider --doctest-modules libs services

test-integration: venv
	$(call run_phases,-m integration)

# The stack in containers under podman (tests/containers; needs podman and runc).
test-containers: venv
	$(BIN)/python -m pytest -m containers $(PYTEST_ARGS)

# Needs podman (or docker: CONTAINER_ENGINE=docker); see containers/build-images.sh.
image: venv
	PYTHON=$(abspath $(BIN)/python) containers/build-images.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/python tools/complexity_ratchet.py
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every benchmarks/*.py but soak.py (`make soak`) and brokerlog.py (the soak's reader of the
# broker's log, not a benchmark).
bench: venv
	STREAMML_KAFKA_DIR=.kafka-bench $(BIN)/streamml kafka up --port $(BENCH_PORT)
	status=0; \
	for b in benchmarks/*.py; do \
	  case $$b in */_*|*/soak.py|*/brokerlog.py) continue;; esac; \
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
	-$(BIN)/streamml registry down
	rm -rf $(VENV) .kafka .kafka-bench .registry .pytest_cache .mypy_cache .ruff_cache
