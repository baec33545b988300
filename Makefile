# Two commands on a fresh machine: `make demo` and `make test` (`make docs` builds the site).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_output
# Two worker processes, each test module kept on one worker (its module fixtures made once).
PYTEST_WORKERS ?= -n 2 --dist loadscope
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint docs bench wheel-check clean

# The virtual environment; re-installed only when the packaging files change.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(VENV)/.installed $(VENV)/.installed-docs $@

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(VENV)/.installed $@

# Synthetic faces with a simulated AffectNetC25 crowd: builds the dataset, trains one small model
# per target (truth, majority vote, Dawid-Skene, crowd layers), prints the table vs the truth.
demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py --output-dir $(DEMO_DIR)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/check_sizes.py

# The documentation site into site/; --strict fails on any warning (broken links, missing
# references, docstring problems). NO_MKDOCS_2_WARNING hides Material's notice about MkDocs 2.0.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(VENV)/.installed-test lint docs
	$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The inner loop: ruff and the tests not marked slow (`make test` runs everything).
test-fast: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# The wheel installed into a clean venv outside the repository: train, predict, export (CI).
wheel-check: $(VENV)/.installed-test
	PYTHON=$(PYTHON) bash .ci/wheel_check.sh

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_crowd.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist site *.egg-info .pytest_cache .ruff_cache
