# One place for every gate: `make check` runs format, lint, types and the tests with coverage.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
DATA ?= ../shared/data/routing
HARD ?= ../shared/data/difficulty
# prompts of known difficulty: the shared families plus the two anchor sets kept in data/
DIFFICULTY := $(HARD)/math_train.jsonl $(HARD)/leetcode.jsonl $(HARD)/arena_bench.jsonl \
	data/everyday.jsonl data/expert.jsonl
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup redis chromium test lint typecheck check format serve classifier eval bench schema soak

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }

# the dashboard test renders /dashboard in headless Chromium
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

test: setup redis chromium
	$(BIN)/pytest -q --cov=router --cov-report=term:skip-covered

lint: setup
	$(BIN)/ruff format --check router tests bench
	$(BIN)/ruff check router tests bench
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

format: setup
	$(BIN)/ruff format router tests bench
	$(BIN)/ruff check --fix router tests bench

serve: setup
	$(BIN)/flashpro serve --simulate

schema: setup
	$(BIN)/flashpro policy schema --out policies/policy.schema.json

# Rebuilds the shipped artifact (deterministic), then prints the routing table on the routing dev
# split and the difficulty table on the 20% of each difficulty file that training never sees.
classifier: setup
	$(BIN)/flashpro train --data $(DATA)/train.jsonl --difficulty $(DIFFICULTY) \
	    --out router/data/classifier.npz --sources mmlu,gsm8k,mt_bench
	$(BIN)/flashpro eval --data $(DATA)/dev.jsonl --difficulty $(DIFFICULTY) --holdout

# Side by side: the upstream alone, flashpro (transports, workers, two processes behind nginx),
# LiteLLM's proxy (from a benchmark-only venv, .bench-venv); installs wrk and nginx with apt-get
# when missing (as root).
# BENCH_ARGS="--streams 200 --seconds 4" for a quicker run.
bench: setup
	$(BIN)/flashpro bench $(BENCH_ARGS)

# Mixed streaming and whole requests with injected faults against a real `flashpro serve`
# (about 3 minutes): requests sent, answered, failed properly, lost (must be 0), and RSS.
soak: setup redis
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

eval: setup
	$(BIN)/flashpro eval --data $(DATA)/dev.jsonl --plot bench/results/dev-curve.png
