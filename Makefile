# Clara: `make demo` runs a training job end to end, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install services demo demo-data test test-unit test-integration test-e2e test-reliability lint bench-datasets bench-training bench-api api worker worker-cpu flower tiny-model clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

services:
	bash scripts/services.sh

demo: install services
	$(PY) scripts/demo.py

demo-data: install services
	$(PY) -m dataset_builder.sample_corpus

bench-datasets: install services
	$(PY) benchmarks/bench_datasets.py

bench-training: install
	$(PY) benchmarks/bench_training.py

# Closed-loop load with wrk (apt-get install -y wrk), Clara against a bare Flask app under gunicorn and python -m api.
bench-api: install services
	@command -v wrk >/dev/null || { echo "bench-api needs wrk: apt-get install -y wrk (Debian/Ubuntu), brew install wrk (macOS)."; exit 1; }
	$(PY) benchmarks/bench_api.py

test: install services
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install services
	$(PY) -m pytest tests/integration

test-e2e: install services
	$(PY) -m pytest tests/e2e

# Fault injection, the long runs included (five SIGKILLs across three jobs); `make test` skips those.
test-reliability: install services
	CLARA_TEST_SLOW=1 $(PY) -m pytest tests/reliability

lint: install
	$(VENV)/bin/ruff check .

api: install
	$(PY) -m api

worker: install
	$(VENV)/bin/celery -A tasks worker -Q gpu -n gpu@%h --loglevel INFO

worker-cpu: install
	$(VENV)/bin/celery -A tasks worker -Q cpu -n cpu@%h --concurrency 2 --loglevel INFO

flower: install
	@test -n "$$CLARA_FLOWER_BASIC_AUTH" || { echo "Set CLARA_FLOWER_BASIC_AUTH=user:password first; Flower never runs open."; exit 1; }
	@# Through Flower's FLOWER_BASIC_AUTH variable, not --basic-auth: a command line shows in every user's ps.
	FLOWER_BASIC_AUTH="$$CLARA_FLOWER_BASIC_AUTH" $(VENV)/bin/celery -A tasks flower --port=5555 --address=127.0.0.1

tiny-model: install
	$(PY) -m trainers.tiny_model var/models/tiny-llama --corpus examples/demo-train.jsonl

clean:
	rm -rf var .pytest_cache
