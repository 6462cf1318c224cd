# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cgrpo-installed

.PHONY: setup demo study test lint clean

# torch is pinned here (not in pyproject) so users keep their own CUDA build;
# on this CPU-only set-up torch==2.13.0 resolves to the local CPU wheel.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,flux,rewards,wandb,hf,app]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	rm -rf runs/demo
	$(VENV)/bin/cgrpo train --config configs/toy.yaml --output runs/demo

# The synergy study (docs/STUDY.md): naive GRPO vs SARS, TDW and SARS + TDW, several seeds.
study: setup
	$(VENV)/bin/cgrpo study --study configs/study/toy.yaml --out runs/study --jobs 2

test: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
