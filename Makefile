# Every target makes its own virtualenv from pyproject.toml; nothing relies on a
# hand-installed package. PYTHON may name another interpreter (3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: test lint typecheck unit demo bench chaos soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	@rm -f $(VENV)/.installed-* && touch $@

## make test: lint, type-check and the whole test suite against real servers
test: $(STAMP)
	$(BIN)/ruff check celery_redlock tests benchmarks
	$(BIN)/ruff format --check celery_redlock tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check celery_redlock tests benchmarks
	$(BIN)/ruff format --check celery_redlock tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow"

## make bench: the benchmark table, side by side with peer libraries (own venv)
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	@touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks.bench_lock

## make chaos: real masters under injected faults for DURATION seconds (default 120)
DURATION ?= 120
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --duration $(DURATION)

## make soak: the deterministic simulator's long mode
soak: $(STAMP)
	$(BIN)/python -m tests.simulation --soak

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
