# One command on a fresh machine: each target creates .venv and installs avssl when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
METHODS ?= avc
JOBS ?=          # steps side by side after the shards (empty: one per method, at most one per core)

.PHONY: install lint test test-fast demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	WANDB_MODE=offline $(BIN)/python -m pytest -q -ra tests

test-fast: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -ra -m "not slow" tests

demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/python scripts/demo.py --out $(DEMO_DIR) --methods $(METHODS) $(if $(strip $(JOBS)),--jobs $(JOBS))

clean:
	rm -rf $(VENV) runs build *.egg-info
