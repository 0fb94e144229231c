# Two commands on a fresh machine (see README):
#   make repro [DATA=../shared/data/personachat]   install everything, run the whole pipeline
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

# DATA may be a directory of ParlAI files or a personachat.tgz; without it the stage
# downloads ParlAI's archive. `dvc exp run -S` records the choice in params.yaml.
repro: install
	$(BIN)/dvc exp run $(if $(DATA),-S 'fetch.source=$(DATA)')

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pipeline stages tests
