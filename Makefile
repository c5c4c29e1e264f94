# The README's two commands: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= schedules.example.yaml
METRICS_ADDR ?= 127.0.0.1:9464
WEB_ADDR ?= 127.0.0.1:8080
STORE ?= sqlite:///.scheduler/run.db

.PHONY: run test lint typecheck unit dist bench bench-queues clean

$(BIN)/scheduler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The clock with a SQLite store and its dashboard (the web.serving line gives its URL).
run: $(BIN)/scheduler
	@echo "dashboard: http://$(WEB_ADDR)/"
	$(BIN)/scheduler run --config $(CONFIG) --log-format console --metrics-addr $(METRICS_ADDR) \
		--store $(STORE) --web $(WEB_ADDR)

lint: $(BIN)/scheduler
	$(BIN)/ruff check scheduler tests bench
	$(BIN)/ruff format --check scheduler tests bench

typecheck: $(BIN)/scheduler
	$(BIN)/mypy

# Two workers for everything but the tests that assert a time bound, which then run alone: most integration
# tests spend their time waiting for instants to come, so the two cores are not what limits them.
unit: $(BIN)/scheduler
	$(BIN)/pytest -q -n 2 -m "not timing"
	$(BIN)/pytest -q -m timing

# The wheel and sdist as they would go to PyPI (as scheduler-clock), with their metadata checked.
dist: $(BIN)/scheduler
	rm -rf dist
	$(BIN)/python -m build --quiet --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

test: lint typecheck dist unit

# Side by side with APScheduler 3 and a C floor; prints a table, writes bench/results/. Needs cc. Then the
# dashboard: server time on a store of 1,000,000 runs, and a clock's latency while it is hammered.
bench: $(BIN)/scheduler
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py
	$(BIN)/python bench/web.py

# Enqueueing, side by side with sidekiq-cron, RQ's cron and Celery beat on one Redis; prints a table, writes
# bench/results/queues.json. Needs Redis (BENCH_REDIS_URL, whose database it flushes) and Debian's
# ruby-sidekiq and ruby-sidekiq-cron.
bench-queues: $(BIN)/scheduler
	$(BIN)/pip install --quiet -e '.[test,redis,celery]'
	$(BIN)/python bench/queues.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dist build *.egg-info
