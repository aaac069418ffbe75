# Developer entry points. `make test` builds .venv (CPU torch) and runs the test suite;
# `make quickstart` runs the README's quickstart; `make lint` runs ruff. GPU users: install the CUDA build of torch in
# the venv first (TORCH="torch") or override TORCH with the build you want.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint quickstart bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,test]"
	# only for the CLIP BPE vocabulary of the tiny test pipeline (its torchvision dependency is not wanted)
	$(BIN)/python -m pip install -q --no-deps "open_clip_torch==3.3.0"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

quickstart: $(STAMP)
	cd $(CURDIR) && $(BIN)/python examples/quickstart.py

bench: $(STAMP)
	$(BIN)/python bench/theory.py
	$(BIN)/python bench/toy_convergence.py
	$(BIN)/python bench/layer_speed.py
	$(BIN)/python bench/unet_step.py

clean:
	rm -rf $(VENV) loca-quickstart .pytest_cache
