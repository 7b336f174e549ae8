# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
FAISS ?= cpu            # cpu or gpu: which faiss wheel to install (they provide the same module)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(strip $(FAISS))

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[$(strip $(FAISS)),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/dmdl train

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/clustering.py

clean:
	rm -rf $(VENV) runs
