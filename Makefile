# The README's two commands: `make demo` (the offline default job) and `make test`.
# Both set everything up on a fresh machine: a .venv with the pinned packages, and the
# Debian data packages the offline scenarios read (tasks/*/debian-packages.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 0

.PHONY: setup data demo test bench lint clean

# The example third-party plugins (examples/*) install beside the project: CI runs them.
EXAMPLES := $(wildcard examples/*/pyproject.toml)

$(STAMP): pyproject.toml $(EXAMPLES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,postgres,clip,ray]'
	$(BIN)/pip install --quiet --disable-pip-version-check $(foreach example,$(EXAMPLES),-e $(dir $(example)))
	touch $(STAMP)

data:
	scripts/debian_data.sh

setup: $(STAMP) data

demo: setup
	@for seed in $(SEEDS); do \
		$(BIN)/forgetbench run --task wordnet --method finetune --seed $$seed || exit 1; \
		$(BIN)/forgetbench run --task wordnet --method mixcd --seed $$seed || exit 1; \
	done
	$(BIN)/forgetbench leaderboard --task wordnet

# PostgreSQL (Debian's, on loopback) backs the store tests that must pass on both backends.
test: setup
	FORGETBENCH_TEST_PG_URL="$$(scripts/postgres.sh)" && export FORGETBENCH_TEST_PG_URL && $(BIN)/pytest

# Every benchmark at quick sizes, one table (docs/performance.md); on a GPU when there is one.
bench: setup
	$(BIN)/python -m bench.run_all --quick

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info
