# farm — the commands. `make demo` and `make test` work on a fresh machine with Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FARM := $(BIN)/farm
PROCS := $(BIN)/python ops/procs.py
# the embedded servers' folder: one per user, found from any directory (farm.settings)
export FARM_DATA_DIR ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/farm
SIM_PORT ?= 8787
SIM_URL ?= http://127.0.0.1:$(SIM_PORT)
FLOWER_PORT ?= 5555

.PHONY: install up down migrate sim workers stop-workers flower stop demo test test-faults test-unit \
        test-integration test-e2e test-ops bench bench-limits bench-spread bench-cost partition lint typecheck check clean dlq-list \
        dlq-replay-all dlq-purge limits throttle pause resume estimate report report-html \
        budgets budget-set budget-rm

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "farm needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

up: install            ## start the embedded Valkey + PostgreSQL (unless URLs are configured)
	$(FARM) up

down: install          ## stop the embedded services
	$(FARM) down

migrate: up            ## create/upgrade the schema
	$(FARM) migrate

sim: install           ## run the simulator in the background on :8787
	$(PROCS) start sim --ready port:$(SIM_PORT) -- $(FARM) sim --port $(SIM_PORT)

workers: migrate       ## one worker per queue + the intake worker, under a supervisor that restarts them (needs ANTHROPIC_API_KEY; for the sim any value)
	$(PROCS) start workers --ready worker -- $(FARM) supervise --strict-start \
	    --worker haiku-simple --worker sonnet-complex --worker 'farm-intake -c 8'

stop-workers:          ## stop the supervisor and its workers (warm shutdown)
	$(PROCS) stop workers

flower: up             ## Flower on :5555 (needs FARM_FLOWER_USER / FARM_FLOWER_PASSWORD)
	$(PROCS) start flower --ready port:$(FLOWER_PORT) -- $(FARM) flower --port $(FLOWER_PORT)

dlq-list: install      ## the dead-letter queue
	$(FARM) dlq list

dlq-replay-all: install
	$(FARM) dlq replay --all

dlq-purge: install
	$(FARM) dlq purge --yes

limits: install        ## limits, current use and circuit state per model
	$(FARM) limits

throttle: install      ## make throttle MODEL=claude-sonnet-5-5 PERCENT=50 (PERCENT=off lifts it)
	@test -n "$(MODEL)" -a -n "$(PERCENT)" || { echo "usage: make throttle MODEL=… PERCENT=1-100|off"; exit 2; }
	$(FARM) throttle "$(MODEL)" "$(PERCENT)"

pause: install         ## make pause QUEUE=sonnet-complex
	@test -n "$(QUEUE)" || { echo "usage: make pause QUEUE=…"; exit 2; }
	$(FARM) pause "$(QUEUE)"

resume: install        ## make resume QUEUE=sonnet-complex
	@test -n "$(QUEUE)" || { echo "usage: make resume QUEUE=…"; exit 2; }
	$(FARM) resume "$(QUEUE)"

estimate: install       ## make estimate FILE=jobs.jsonl: route, worst-case and expected cost per job; enqueues nothing
	@test -n "$(FILE)" || { echo "usage: make estimate FILE=jobs.jsonl"; exit 2; }
	$(FARM) submit --dry-run --file "$(FILE)"

report: install        ## cost report: make report [BY=day,model] [SINCE=7d] (default: per queue and model)
	$(FARM) report $(if $(BY),--by "$(BY)") $(if $(SINCE),--since "$(SINCE)")

report-html: install   ## the cost report as one self-contained page: make report-html [FILE=report.html] [SINCE=7d]
	$(FARM) report --html "$(or $(FILE),report.html)" $(if $(SINCE),--since "$(SINCE)")

budgets: install       ## every budget: limit, spent, reserved and remaining in its period
	$(FARM) budget list

budget-set: install    ## make budget-set ARGS="--tenant search --usd 50 --period day [--soft 0.8]"
	@test -n "$(ARGS)" || { echo 'usage: make budget-set ARGS="--tenant T --usd 50 --period day"'; exit 2; }
	$(FARM) budget set $(ARGS)

budget-rm: install     ## make budget-rm ID=tenant:search:day
	@test -n "$(ID)" || { echo "usage: make budget-rm ID=…"; exit 2; }
	$(FARM) budget rm "$(ID)"

stop:                  ## stop every background process started here
	$(PROCS) stop

demo: install          ## the whole farm end to end on the embedded services + simulator
	$(BIN)/python ops/demo.py

test: install          ## the whole suite: unit, integration (real Redis/Postgres), e2e (real workers)
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

test-e2e: install
	$(BIN)/python -m pytest tests/e2e

test-ops: install      ## real Prometheus + Alertmanager on a farm under load; the HTML report in headless Chromium (apt-installs them)
	@# the packages' own services (on :9090 and :9093, where there is an init system) are not
	@# used: the tests start their own servers on free ports
	ops/apt_tools.sh "Prometheus and Alertmanager" 'command -v prometheus && command -v promtool && command -v amtool && { command -v alertmanager || command -v prometheus-alertmanager; }' prometheus prometheus-alertmanager
	ops/apt_tools.sh "headless Chromium and a DejaVu font" 'command -v chromium && fc-list | grep -qi dejavu' chromium fonts-dejavu-core
	promtool check rules ops/prometheus/farm-alerts.yml
	promtool check config ops/prometheus/prometheus.yml
	amtool check-config ops/alertmanager/alertmanager.yml
	promtool test rules ops/prometheus/*.test.yml
	$(BIN)/python -m pytest tests/ops

test-faults: install   ## only the fault tests (kills, restarts, outages; also in `make test`)
	$(BIN)/python -m pytest tests/faults

bench: install         ## farm vs plain Celery, one worker each: 1 s latency at 100 concurrency, a CPU-bound run (50 ms latency, router and limits on), 1 s latency at 1000 concurrency; then the issue's goals, met or not
	$(BIN)/python ops/bench.py

bench-limits: install  ## pacing vs full-minute and 10 s-burst providers; storm (FARM_BENCH_LIMITS_SCENARIOS=all: + plain Celery)
	$(BIN)/python ops/bench_limits.py

bench-spread: install  ## per-worker job counts of 3 workers of one queue, elastic slots on and off (~7 min)
	$(BIN)/python ops/bench_spread.py

bench-cost: install    ## 1,000 mixed jobs through the farm (memo, prompt cache, batches, router) and all-sync on the complex model: cost ratio, latency (~4 min)
	$(BIN)/python ops/bench_cost.py

partition: install     ## issue 17: a worker host cut off for 75 s (network namespaces; needs root)
	$(BIN)/python ops/partition.py

lint: install
	$(BIN)/ruff check farm tests ops celeryconfig.py migrations

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

clean: stop down
	rm -rf $(FARM_DATA_DIR) .farm-test
