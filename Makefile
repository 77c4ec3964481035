# The two commands of a fresh machine:  make run   (serve)   and   make test   (test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: run test lint install-serve install-dev corpus train export recover bench bench-http topology loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Serving needs no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(VENV)/.serve

install-serve: $(VENV)/.serve
install-dev: $(VENV)/.dev

run: $(VENV)/.serve
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/ruff check model export service tests loadtest
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check model export service tests loadtest
	$(BIN)/ruff format --check model export service tests loadtest
	$(BIN)/mypy service

# Training path: corpus -> model -> bundle (see README "Training the default bundle").
corpus: $(VENV)/.dev
	$(BIN)/python -m model.corpus --out data/bible

train: corpus
	$(BIN)/python -m model.train --data data/bible --out runs/en-es --resume

export: $(VENV)/.dev
	$(BIN)/python -m export.convert runs/en-es/best.pt bundles/en-es --test data/bible/test.tsv --evaluate

# The PyTorch model of the shipped bundle, read back from its graphs (no training run needed).
RECOVERED := runs/en-es/recovered.pt
$(RECOVERED): bundles/en-es/model.json | $(VENV)/.dev
	$(BIN)/python -m export.recover bundles/en-es $@ --test tests/fixtures/tiny/test.tsv
recover: $(RECOVERED)

# Side-by-side engine benchmark on the test split (docs/PERFORMANCE.md).
bench: corpus $(RECOVERED)
	$(BIN)/python loadtest/bench_engine.py --bundle bundles/en-es --checkpoint $(RECOVERED) \
		--test data/bible/test.tsv --int8 --json loadtest/reports/bench_engine.json

# The same over HTTP: PyTorch eager baseline and the three batching modes, 1/8/32/64 clients.
bench-http: corpus $(RECOVERED)
	$(BIN)/python -m loadtest.bench_http --bundle bundles/en-es --checkpoint $(RECOVERED) \
		--test data/bible/test.tsv --json loadtest/reports/bench_http.json --plot loadtest/reports/bench_http.png

# Redis + two replicas + nginx on loopback, as docker-compose.yml runs them (Ctrl-C stops).
topology: $(VENV)/.dev
	$(BIN)/python -m loadtest.topology --bundle bundles/en-es

# A headless Locust run through that topology, with its pass/fail thresholds.
loadtest: $(VENV)/.dev
	$(BIN)/python -m loadtest.topology --bundle bundles/en-es --set RATE_LIMIT_CHARS_PER_MINUTE=0 -- \
		$(BIN)/locust --config loadtest/locust.conf --host {url}

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
