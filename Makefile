# Set-up and entry points. `make pipeline` runs the main job, `make test` the tests;
# both create the virtual environment first if needed (CPU torch from local disk, then ecgtl).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ecgtl-installed
# CPU build of torch; GPU users: see README ("GPU install").
TORCH ?= torch==2.13.0

.PHONY: install pipeline test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

pipeline: $(STAMP)
	$(BIN)/ecgtl pipeline

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data .pytest_cache
