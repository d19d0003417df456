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

# The demo runs what exists today, end to end on the embedded defaults (SQLite, embedded
# Redis, in-process sandbox): a synthetic campus with history, tiers, a churn model trained
# on a time split, 14 virtual days of the journeys in journeys/ through the real stack, the
# touches exported, an independent policy audit of every send, and the win-back journey's
# report (terminal table and reports/demo.html).
DEMO := .recall/demo
DEMO_ENV := RECALL_STATE_DIR=$(DEMO)/state
START := 2026-02-18T00:00:00+08:00

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO) reports
	$(BIN)/recall validate journeys
	$(BIN)/python -m orchestrator.audience.synth --users 3000 --days 58 --seed 7 \
		--start 2026-01-05T00:00:00+08:00 --history-until $(START) --out $(DEMO)
	$(DEMO_ENV) $(BIN)/recall import users $(DEMO)/users.csv
	$(DEMO_ENV) $(BIN)/recall import events $(DEMO)/events-history.jsonl
	$(DEMO_ENV) $(BIN)/recall churn train --cutoff 2026-01-21 --horizon 14d --model gbm
	$(DEMO_ENV) $(BIN)/recall simulate --days 14 --start $(START) --users $(DEMO)/users.csv \
		--events $(DEMO)/events.jsonl --seed 7
	$(DEMO_ENV) $(BIN)/recall export touches --format csv --out reports/demo-touches.csv
	$(DEMO_ENV) $(BIN)/recall export enrollments --format csv --out reports/demo-enrollments.csv
	$(DEMO_ENV) $(BIN)/recall audit
	$(DEMO_ENV) $(BIN)/recall report winback-at-risk
	$(DEMO_ENV) $(BIN)/recall report winback-at-risk --format html --out reports/demo.html

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
