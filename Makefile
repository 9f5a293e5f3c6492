# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cliplab-installed

.PHONY: demo test test-fast bench lint setup clean

setup: $(STAMP)

# torch is pinned first so pip takes this machine's CPU build instead of a multi-GB CUDA one.
# clip-anytorch carries OpenAI's reference model.py/simple_tokenizer.py used by the parity tests;
# it declares torchvision (which does not import beside CPU torch 2.13), hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "clip-anytorch==2.6.0"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cliplab train --config configs/demo.yaml --out runs/demo --overwrite

# setup installs every parity reference (transformers via [test], clip-anytorch above), so a missing
# one is a broken environment: --require-references fails those tests instead of skipping them.
test: $(STAMP)
	$(PY) -m pytest --require-references

# Everything but the tests marked slow (full-depth parity of the big models, long runs): minutes, not tens.
test-fast: $(STAMP)
	$(PY) -m pytest --require-references -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
