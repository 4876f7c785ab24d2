# The same targets run locally and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
VENV := .venv/bin
DURATION ?= 60

.PHONY: help bootstrap demo test unit lint typecheck bench chaos kafka-up kafka-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

bootstrap: ## create .venv, install the project, fetch the Kafka jars
	@scripts/bootstrap

demo: bootstrap ## local Kafka + Bitrix24 simulator + demo traffic + the consumer, for DURATION seconds
	@ops/kafka/local-kafka.sh start
	@$(VENV)/imconnector-consumer demo --duration $(DURATION)

test: bootstrap ## lint, types, then the whole test suite against a real local Kafka
	@$(VENV)/ruff check consumer schemas tests ops && $(VENV)/ruff format --check consumer schemas tests ops
	@$(VENV)/mypy
	@ops/kafka/local-kafka.sh start
	@$(VENV)/python -m pytest tests

unit: bootstrap ## unit tests only (no broker)
	@$(VENV)/python -m pytest tests/unit

lint: bootstrap ## ruff lint + format check
	@$(VENV)/ruff check consumer schemas tests ops && $(VENV)/ruff format --check consumer schemas tests ops

typecheck: bootstrap ## mypy --strict on consumer/ and schemas/
	@$(VENV)/mypy

chaos: bootstrap ## the full chaos run: 50,000 events, 2,000 chats, 10 kills, a broker restart
	@ops/kafka/local-kafka.sh start
	@CHAOS_EVENTS=50000 CHAOS_CHATS=2000 CHAOS_KILLS=10 $(VENV)/python -m pytest tests/integration/test_chaos.py -s -q

bench: bootstrap ## service vs naive consumer on the same workload (prints a table)
	@ops/kafka/local-kafka.sh start
	@$(VENV)/python -m ops.bench.run

kafka-up: ## start the local Kafka broker
	@ops/kafka/local-kafka.sh start

kafka-down: ## stop the local Kafka broker
	@ops/kafka/local-kafka.sh stop
