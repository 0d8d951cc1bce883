# Every target creates .venv on first use; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# as an installed package would be: the command starts from bytecode, not source
	$(BIN)/python -m compileall -q src > /dev/null
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/worktask-server

lint: $(STAMP)
	$(BIN)/ruff check src tests bench server.py client.py
	$(BIN)/ruff format --check src tests bench server.py client.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
