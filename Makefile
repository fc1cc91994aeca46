# The two commands: `make demo` and `make test`. Both create the virtualenv and install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# No analytics from Prefect's ephemeral server: the machines here have no internet.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# ... and its 20 s start-up limit is too short on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: install demo test lint unit bench bench-resolve bench-features bench-online bench-train bench-serve bench-decide bench-monitor bench-drift bench-recommend bench-erase bench-topics bench-spark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

# constraints.txt locks the set of versions known to work together (see ../shared/DESIGN.md).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt Makefile
	$(BIN)/uv pip install --python $(BIN)/python --constraint constraints.txt -e '.[dev,spark]'
	# MovieLens-100k ships inside RecBole's wheel, CDNOW inside lifetimes': the recommender's and BG/NBD's
	# real-data tests read them. Only the data is used (the packages are never imported), so their own
	# dependencies (torch, autograd, ...) are not installed.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps recbole==1.2.1 lifetimes==0.11.3
	# The Open Bandit Dataset sample (random and Thompson-sampling logs) and BTS prior ship inside obp's wheel:
	# the off-policy estimators' real-data test reads them by path (obp needs torch; it is never imported).
	$(BIN)/uv pip install --python $(BIN)/python --no-deps obp==0.5.7
	# California's Proposition 99 panel (per-capita cigarette sales) ships inside CausalPy's wheel: the synthetic
	# control's real-data test reads it by path (CausalPy needs pymc; it is never imported).
	$(BIN)/uv pip install --python $(BIN)/python --no-deps causalpy==0.9.0
	# Byte-compile what is installed: with PYTHONDONTWRITEBYTECODE set (as on some CI machines) nothing would
	# cache it, and every command, server and test subprocess would compile MLflow, Prefect, ... from source again.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/custintel demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo

unit: install
	$(BIN)/python -m pytest -m "not integration"

# The governance site's browser test drives Debian's headless chromium, the Spark engine's tests a Java 17 runtime:
# install them (apt) when missing.
test: lint
	scripts/ensure-chromium
	scripts/ensure-java
	$(BIN)/python -m pytest -n 2 --dist loadfile --cov --cov-report=term

bench: install
	$(BIN)/python -m benchmarks.bench_generate_ingest

bench-resolve: install
	$(BIN)/python -m benchmarks.bench_resolve

bench-features: install
	$(BIN)/python -m benchmarks.bench_features

bench-online: install
	$(BIN)/python -m benchmarks.bench_online

bench-train: install
	$(BIN)/python -m benchmarks.bench_train

bench-recommend: install
	$(BIN)/python -m benchmarks.bench_recommend

bench-serve: install
	$(BIN)/python -m benchmarks.bench_serving

bench-decide: install
	$(BIN)/python -m benchmarks.bench_decide

bench-drift: install
	$(BIN)/python -m benchmarks.bench_drift

bench-monitor: install
	$(BIN)/python -m benchmarks.bench_monitor

bench-erase: install
	$(BIN)/python -m benchmarks.bench_erase

bench-topics: install
	$(BIN)/python -m benchmarks.bench_topics

# DuckDB against Spark (local[2]) for identity, features and batch scoring at 100k customers (CUSTOMERS=1000000 too).
CUSTOMERS ?= 100000
bench-spark: install
	scripts/ensure-java
	$(BIN)/python -m benchmarks.bench_spark --customers $(CUSTOMERS)

clean:
	rm -rf $(VENV) .custintel .pytest_cache .mypy_cache .ruff_cache .coverage
