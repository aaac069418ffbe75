# Developer entry points. `make test` builds .venv (CPU torch) and runs the test suite;
# `make quickstart` runs the README's quickstart; `make demo` serves the web app; `make lint` runs ruff.
# GPU users: install the CUDA build of torch in the venv first (TORCH="torch") or override TORCH with the
# build you want.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser test lint quickstart demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,test]"
	# only for the CLIP BPE vocabulary of the tiny test pipeline (its torchvision dependency is not wanted)
	$(BIN)/python -m pip install -q --no-deps "open_clip_torch==3.3.0"
	touch $(STAMP)

venv: $(STAMP)

# The app's browser test needs Chromium and its WebDriver (Debian: chromium, chromium-driver).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -q && apt-get install -y -q chromium chromium-driver; } || { \
	      echo "error: apt-get could not install chromium and chromium-driver, which the browser test needs" >&2; \
	      exit 1; }; \
	  else \
	    echo "error: the browser test needs chromium and chromedriver; install them with" \
	         "'sudo apt-get install -y chromium chromium-driver' (or your system's packages) and run make test again" >&2; \
	    exit 1; \
	  fi; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

quickstart: $(STAMP)
	cd $(CURDIR) && $(BIN)/python examples/quickstart.py

# the web app on the embedded default model and adapters, at http://127.0.0.1:7860 (options: ARGS="--port 8080 ...")
demo: $(STAMP)
	cd $(CURDIR) && $(BIN)/python app/app.py $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/theory.py
	$(BIN)/python bench/toy_convergence.py
	$(BIN)/python bench/layer_speed.py
	$(BIN)/python bench/unet_step.py

clean:
	rm -rf $(VENV) loca-quickstart .pytest_cache
