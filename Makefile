# The two commands of the README: `make demo` and `make test`. Both create the venv when missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-faults test-slow test-stack test-packaging bench install clean up down status

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a looser requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The small region across Sichuan's border into Chongqing (nodata outside the province), a week
# archived, without the model comparison (3 models x 3 protocols, about as costly as the training
# itself on a CPU): aiming at 12 minutes on two cores (issue 12). The comparison:
# `make demo DEMO_ARGS="--small --archive-days 7"`; all of Sichuan: `make demo DEMO_ARGS=`.
DEMO_ARGS ?= --small --archive-days 7 --no-compare
demo: $(STAMP)
	$(BIN)/xco2 demo $(DEMO_ARGS)

# The linter first (rules in pyproject.toml, [tool.ruff]): seconds, and it names the line. Then the
# import contracts ([tool.importlinter]: the design card's layering, a second) and the type check
# ([tool.mypy]: about a minute on a fresh clone, seconds once .mypy_cache exists).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

# Against real servers on loopback: the stack (Prefect server, MLflow server, worker) on SQLite and on
# PostgreSQL, the docker compose services run as local processes (about 13 min on two cores), and the
# operator's first hour after the demo through both UIs in Debian's chromium (about 18 min more).
test-stack: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_stack.py tests/test_compose_stack.py tests/test_stack_browser.py -p no:cacheprovider

# The slow half of the fault-injection suite (docs/faults.md), test-packaging included: about 4.5 min
# on two cores before test-packaging's installs and demo, about 25 min with them.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/faults -p no:cacheprovider

# The slow tests beside the fast ones in tests/ (the past-window check, a share-0 day through map_day
# both ways, the real benchmark end to end on a tiny table): kept out of `make test` for time, run by CI.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_past_window.py tests/test_network_free.py tests/test_benchmark_real.py -p no:cacheprovider

# The project as users get it (issue 10, case 8; issue 20): the wheel, dependencies resolved from the
# registry under constraints.txt (no extras, not editable), in a fresh venv with the CPU torch; from
# outside the checkout every module imports and `xco2 --help`, `sources check`, `config` and
# `demo --small` run. Then the Dockerfile's own `pip install` line in another fresh venv. The
# registry's downloads are fetched once into a wheelhouse (about 0.5-2 min); measured on two cores
# shared with other jobs: the wheel's test about 15 min (the demo most of it), the Dockerfile's 4.5 min.
test-packaging: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/faults/test_packaging_wheel.py -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m pytest -q -s -m slow tests/benchmarks -p no:cacheprovider

# The real-value benchmark (docs/benchmark-real.md): real OCO-2 retrievals over three boxes x windows
# of the development set (../shared/data; SKIPPED when absent), one combined table. About 20 min a box
# on two cores.
.PHONY: bench-real
BENCH_REAL_ARGS ?= --box amazon --box andes --box south
bench-real: $(STAMP)
	$(BIN)/xco2 benchmark real $(BENCH_REAL_ARGS)

# The local stack (Prefect server, MLflow server, worker): docs/operations.md, "The stack".
up: $(STAMP)
	$(BIN)/python -m deployments.stack up

down:
	$(BIN)/python -m deployments.stack down

status:
	$(BIN)/python -m deployments.stack status

clean:
	rm -rf $(VENV) xco2-data
