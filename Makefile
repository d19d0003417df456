# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench bench-quick chaos chaos-quick clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo: a synthetic campus, its churn model and tiers, the journeys in journeys/ run for
# 14 virtual days on the real stack, then the story in the terminal and reports/demo.html
# (`recall demo --help`; its data stays in .recall/demo).
demo: $(STAMP)
	$(BIN)/recall demo

# The suite, then a quick chaos run (which skips, loudly, without PostgreSQL or a
# redis-server, and fails instead under CI=true).
test: $(STAMP)
	$(BIN)/python -m pytest
	$(BIN)/python -m orchestrator.chaos --quick

lint: $(STAMP)
	$(BIN)/ruff check orchestrator workers tests bench
	$(BIN)/mypy orchestrator workers

# Figures, not tests (docs/performance.md): one JSON line per figure, each with its baseline
# measured in the same run, on PostgreSQL + Redis + real worker processes + the sandbox
# (RECALL_BENCH_POSTGRES_URL, RECALL_BENCH_REDIS_URL: a Redis database the bench empties).
# bench-quick: smaller runs, a few minutes.
bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

# Exactly-once under faults (docs/chaos.md): a real deployment on its own redis-server and
# its own PostgreSQL database, workers SIGKILLed, Redis restarted empty, 10% of provider
# calls failing; one JSON line per count, exit 1 on any duplicate, loss, cap violation or
# store/provider mismatch. chaos: 10,000 users; chaos-quick: 2,000, a few minutes.
chaos: $(STAMP)
	$(BIN)/python -m orchestrator.chaos

chaos-quick: $(STAMP)
	$(BIN)/python -m orchestrator.chaos --quick

clean:
	rm -rf $(VENV) .recall .pytest_cache .mypy_cache .ruff_cache
