# The two commands of the README: `make demo` and `make test`.
# Each creates or reuses .venv and installs the pinned dependency set (constraints.txt).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qpe-installed

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qpe demo

test: $(STAMP)
	$(BIN)/ruff check --select F,E9 qpe_core flows tests
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/qpe bench --what simulator,archive,ingest

clean:
	rm -rf data/demo .pytest_cache
