# Two commands do everything on a fresh machine:
#   make book   build the lab notebook (creates .venv, runs what is missing, renders HTML)
#   make test   run the tests in the same environment
# See README.md for rerunning one chapter and for the profiles.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= full
CHAPTER ?=
PARAMS ?=
NAME ?=

.PHONY: venv test lint format book chapters run bench clean-book

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (rebel)"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Execute every chapter with papermill (stored runs are reused), then render the HTML.
book: $(STAMP)
	$(PY) -m rebel.book build --profile $(PROFILE)

# Rerun one chapter with new parameters, e.g.
#   make run CHAPTER=v2_tinycnn PARAMS='-p epochs 30'
run: $(STAMP)
	$(PY) -m rebel.book run $(CHAPTER) --name "$(NAME)" -- $(PARAMS)

bench: $(STAMP)
	$(PY) benchmarks/bench_optimizer.py
	$(PY) benchmarks/bench_training.py

clean-book:
	rm -rf _build executed
