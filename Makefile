# ivig-audit: `make run` audits the shipped sample data; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test venv sample report server bench bench-10m clean

# The first install downloads Polars, DuckDB, Prefect and their dependencies (a few minutes): pip shows its progress.
$(STAMP): pyproject.toml
	@echo "Installing ivig-audit and its dependencies into $(VENV) (the first time takes a few minutes)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Audit sample_data/ into ivig_audit.duckdb and write reports/ (index.html, summary.md).
run: $(STAMP)
	$(BIN)/ivig-audit run --db ivig_audit.duckdb --report-dir reports

## Run the test suite, one worker per core (pytest-xdist; PYTEST_WORKERS=0 runs it in this process).
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

## Regenerate the synthetic sample extracts (deterministic).
sample: $(STAMP)
	$(BIN)/python sample_data/generate.py

## Rewrite the manager summary from the database.
report: $(STAMP)
	$(BIN)/ivig-audit report --db ivig_audit.duckdb --out reports

## Start a local Prefect server (needed by `ivig-audit serve`).
server: $(STAMP)
	$(BIN)/prefect server start

clean:
	rm -rf reports ivig_audit.duckdb ivig_audit.duckdb.wal .pytest_cache

## Benchmark the audit at 1M rows (bench/README.md); writes bench/data/ and bench/out/.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/generate.py --rows 1000000 --out bench/data/orders_1m.csv --parquet --nights 30
	$(BIN)/python bench/run.py bench/data/orders_1m.csv --out bench/out/results_1m.md
	$(BIN)/python bench/run.py bench/data/orders_1m_nights --only ours_csv,ours_night --out bench/out/results_1m_nights.md
	$(BIN)/python bench/cli_path.py bench/data/orders_1m.csv --repeat 3 --out bench/out/cli_1m.md
	$(BIN)/python bench/profile_audit.py bench/data/orders_1m.csv
	$(BIN)/python bench/prefect_overhead.py --repeat 3

## The issue's targets at 10M rows (1.4 GB CSV; about 10 minutes, 4 GB of RAM for the bare parse): the in-process
## audit (run.py) and the whole command line against a tiny night (cli_path.py), each as a ratio of the bare parse.
bench-10m: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/generate.py --rows 10000000 --out bench/data/orders_10m.csv --parquet
	$(BIN)/python bench/run.py bench/data/orders_10m.csv --only parse_csv,parse_duckdb,parse_csv_stream,ours_csv,ours_night,ours_parquet,polars_core,duckdb_sql --repeat 3 --out bench/out/results_10m.md
	$(BIN)/python bench/cli_path.py bench/data/orders_10m.csv --repeat 3 --out bench/out/cli_10m.md
