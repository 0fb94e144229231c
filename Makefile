# Two commands on a fresh machine (see README):
#   make repro [DATA=parlai|<dir>|<tgz>]   install everything, run the whole pipeline
#   make test                                      install everything, run the tests
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
DATA   ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test lint clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, dvc, gensim, transformers, bm25s" # fail loudly if the install did not take
	touch $@

# DATA (optional) overrides fetch.source: a directory of ParlAI files, a personachat.tgz or
# `parlai` (download). Without it: params.yaml's default, the shared slice.
repro: install
	$(BIN)/dvc exp run $(if $(DATA),-S 'fetch.source=$(DATA)')

# Two workers (pytest-xdist), each test file on one: the whole-DAG test on one core, the rest
# on the other. PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pipeline stages tests
