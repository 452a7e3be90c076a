# normbench: `make run` trains the default run on synthetic data, `make test` runs the tests.
# Both install into .venv first when needed (pip, with constraints.txt pinning torch for this environment).
# Editable in compat mode (the checkout on sys.path): Hydra finds the launchers in hydra_plugins/ only by listing
# the namespace package's directories, which the default editable mode hides behind an import hook.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench sweep-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/normbench run

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check normbench hydra_plugins tests scripts
	$(BIN)/ruff format --check normbench hydra_plugins tests scripts
	$(BIN)/lint-imports  # the layers contract in pyproject.toml

bench: install
	$(BIN)/python scripts/bench.py $(BENCH)

sweep-quick: install
	$(BIN)/normbench sweep sweep=quick hydra/launcher=parallel

clean:
	rm -rf $(VENV) runs multirun .pytest_cache .ruff_cache
