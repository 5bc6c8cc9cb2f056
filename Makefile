# Every target makes its own virtualenv from pyproject.toml; nothing relies on a
# hand-installed package. PYTHON may name another interpreter (3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: test lint typecheck unit core-oldest demo bench chaos soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	@rm -f $(VENV)/.installed-* && touch $@

# The oldest redis-py pyproject.toml declares (redis>=X.Y), for the lock core's tests.
REDIS_OLDEST := $(shell sed -n 's/^ *"redis>=\([0-9.]*\)".*/\1/p' pyproject.toml)
OLDEST_VENV ?= .venv-redis$(REDIS_OLDEST)
OLDEST_STAMP := $(OLDEST_VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

$(OLDEST_STAMP): pyproject.toml
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[test]' 'redis==$(REDIS_OLDEST).*'
	@rm -f $(OLDEST_VENV)/.installed-* && touch $@

## make test: lint, type-check, the whole test suite against real servers (newest
## redis-py), then the lock core's tests on the oldest redis-py we declare
test: $(STAMP) $(OLDEST_STAMP)
	$(BIN)/ruff check celery_redlock tests benchmarks example_project
	$(BIN)/ruff format --check celery_redlock tests benchmarks example_project
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -p tests.core

## make core-oldest: only the lock core's tests, on the oldest redis-py we declare
core-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -p tests.core

lint: $(STAMP)
	$(BIN)/ruff check celery_redlock tests benchmarks example_project
	$(BIN)/ruff format --check celery_redlock tests benchmarks example_project

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow"

## make demo: the example project end to end against servers it starts itself (about a
## minute); DEMO_BROKER_URL and DEMO_MASTERS point it at yours, DEMO_ARGS adds options
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python -m example_project.demo $(DEMO_ARGS)

## make bench: the benchmark tables, side by side with peer libraries (own venvs)
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	@touch $@

# The task benchmark needs a Redis broker: kombu 5.7's Redis transport wants redis-py >= 6.1
# (and `packaging`, from celery[redis]), while redlock-ng in '.[bench]' pins redis < 6. So it
# gets a venv of its own (the bench-tasks extra), without the lock peers.
BENCH_TASKS_VENV ?= .venv-bench-tasks
$(BENCH_TASKS_VENV)/.installed: pyproject.toml
	@test -x $(BENCH_TASKS_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_TASKS_VENV)
	$(BENCH_TASKS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_TASKS_VENV)/bin/python -m pip install --quiet -e '.[bench-tasks]'
	@touch $@

bench: $(BENCH_VENV)/.installed $(BENCH_TASKS_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks.bench_lock
	$(BENCH_TASKS_VENV)/bin/python -m benchmarks.bench_tasks
	$(BENCH_TASKS_VENV)/bin/python -m benchmarks.bench_instructions

## make chaos: real masters under injected faults for DURATION seconds (default 120)
DURATION ?= 120
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --duration $(DURATION)

## make soak: the deterministic simulator's long mode
soak: $(STAMP)
	$(BIN)/python -m tests.simulation --soak

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(BENCH_VENV) $(BENCH_TASKS_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
