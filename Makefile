# pytc — every target installs what it needs first, so each works on a fresh clone.
#   make demo    run the main job end to end on built-in synthetic data
#   make test    run the test suite (fast tests; `make test-slow` for the slow ones)
#   make bench   side-by-side benchmarks (ratios against baselines)
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 installs in seconds here; a plain `torch` may pull a CUDA build.
# Override e.g. `make install TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTC := $(VENV)/bin/pytc
STAMP := $(VENV)/.pytc-installed

.PHONY: install demo test test-slow bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[dev]"
	@touch $(STAMP)

# --force: a second `make demo` replaces the previous results in demo_out/ (and nothing else there).
demo: install
	$(PYTC) demo --force

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) bench/startup.py
	$(PY) bench/convert.py
	$(PY) bench/train_step.py
	$(PY) bench/infer.py
	$(PY) bench/decode.py
	$(PY) bench/evaluate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

docs: install
	$(PY) docs/update_readme.py
	$(PY) docs/update_architecture.py
