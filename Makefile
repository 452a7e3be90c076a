# normbench: `make run` trains the default run on synthetic data, `make test` runs the tests.
# Both install into .venv first when needed (pip, with constraints.txt pinning torch for this environment).
# Editable in compat mode (the checkout on sys.path): Hydra finds the launchers in hydra_plugins/ only by listing
# the namespace package's directories, which the default editable mode hides behind an import hook.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-processes test-all lint bench sweep-quick tune-lr clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/normbench run

# The first tier: everything checked inside the test process (a few minutes). The second: real processes, signals,
# sweeps, worker processes, TensorBoard's server, the wheel, SLURM. CI runs both; `test-all` is the two in one.
test: install
	$(BIN)/python -m pytest

test-processes: install
	$(BIN)/python -m pytest -m "process and not slow"

test-all: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check normbench hydra_plugins tests scripts
	$(BIN)/ruff format --check normbench hydra_plugins tests scripts
	$(BIN)/lint-imports  # the layers contract in pyproject.toml

bench: install
	$(BIN)/python scripts/bench.py $(BENCH)

sweep-quick: install
	$(BIN)/normbench sweep sweep=quick hydra/launcher=parallel

# One lr per cell (configs/sweep/tune_lr.yaml): an Optuna study per cell of the quick grid, the quick grid itself,
# then one report that puts each cell's best lr and its error beside the fixed-lr grid (CELLS: read from the quick
# preset). TUNE_DIR to choose where.
TUNE_DIR ?= multirun/tune_lr
CELLS = $(shell sed -n "s/^ *cell: *//p" configs/sweep/quick.yaml | tr , " ")
tune-lr: install
	for cell in $(CELLS); do $(BIN)/normbench sweep sweep=tune_lr cell=$$cell hydra.sweep.dir=$(TUNE_DIR)/$$cell || exit $$?; done
	$(BIN)/normbench sweep sweep=quick hydra/launcher=parallel hydra.sweep.dir=$(TUNE_DIR)/grid
	$(BIN)/normbench report $(TUNE_DIR)

clean:
	rm -rf $(VENV) runs multirun .pytest_cache .ruff_cache
