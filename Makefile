# One command on a fresh machine: each target creates .venv and installs avssl when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
METHODS ?= avc
JOBS ?=          # steps side by side after the shards (empty: one per method, at most one per core)
SEED ?= 0        # the recipes' seed for the steps after the shards (0: the recorded demo; N: in DEMO_DIR/seedN)
DOWNSTREAM ?=    # steps after pretraining (empty: finetune,localize,separate; add retrieve for R@1/5/10)
SEEDS ?= 0,1,2   # demo-seeds: one demo per seed, one after another, on the same data, then mean ± std
comma := ,

.PHONY: install lint test test-fast demo demo-seeds clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	WANDB_MODE=offline $(BIN)/python -m pytest -q -ra --durations=15 tests

test-fast: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -ra -m "not slow" tests

demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/python scripts/demo.py --out $(DEMO_DIR) --methods $(METHODS) --seed $(strip $(SEED)) $(if $(strip $(JOBS)),--jobs $(JOBS)) $(if $(strip $(DOWNSTREAM)),--downstream $(strip $(DOWNSTREAM)))

demo-seeds: $(STAMP)
	set -e; for seed in $(subst $(comma), ,$(SEEDS)); do \
		WANDB_MODE=offline $(BIN)/python scripts/demo.py --out $(DEMO_DIR) --methods $(METHODS) --seed $$seed $(if $(strip $(JOBS)),--jobs $(JOBS)); \
	done
	$(BIN)/python scripts/demo_seeds.py $(DEMO_DIR) --seeds $(strip $(SEEDS))

clean:
	rm -rf $(VENV) runs build *.egg-info
