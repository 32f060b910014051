# Two entry points (see README): `make demo` runs the end-to-end demo, `make test` the tests.
# Each creates ./.venv on first use (CPU torch 2.13.0 when no CUDA is present).
PY := .venv/bin/python
PYTEST_ARGS ?= -m "not slow and not gpu and not integration"

.PHONY: setup demo test test-all lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/install_text_packages.sh --when-allowed
	$(PY) -m tokalign demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q -m "not gpu"

lint: setup
	.venv/bin/ruff check .

clean:
	rm -rf .cache runs mlflow.db mlruns
