# Every target sets up .venv by itself (once; again only when pyproject.toml or
# constraints.txt change). constraints.txt pins the known-good set, torch 2.14.1 included.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= configs/quickstart.yaml

.PHONY: venv run test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

## The main job on the embedded default: the quickstart sweep, then its results table.
run: $(STAMP)
	$(BIN)/dab run $(SPEC)

## The whole test suite, slow end-to-end tests included, in two processes (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

## Everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check dab_core workers service tests bench
	$(BIN)/ruff format --check dab_core workers service tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/dab_overhead.py

clean:
	rm -rf $(VENV) .dab .pytest_cache .mypy_cache .ruff_cache
