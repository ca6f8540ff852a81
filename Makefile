# Two commands on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv first (skipped while it is newer than pyproject.toml).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test test-fast demo cluster-demo bench quality lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

# No end-to-end or multi-JVM test, no download: the inner loop while editing.
test-fast: setup
	$(PY) -m pytest -m "not slow and not network"

demo: setup
	bash scripts/demo.sh

# The DAGs under a running Airflow scheduler (api-server, scheduler, dag-processor) against a Spark
# standalone master and two workers with fake GPUs, all on 127.0.0.1; writes demo/cluster/summary.json
# and stops everything it started (docs/deploy.md).
cluster-demo: setup
	$(VENV)/bin/lime-rank cluster-demo --out demo/cluster

bench: setup
	$(PY) benchmarks/model_scaling.py --threads 1 --rounds 15
	$(PY) benchmarks/pipeline_throughput.py

# Ranking quality on ML-100K (two CPU budgets) and Amazon Sports: lime-xor, sasrec (seeds 0 and 1) and popularity, two runs side by side
quality: setup
	$(PY) benchmarks/quality.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo .pytest_cache
