# leukexp's two entry points: `make run` (install + the default study) and `make test` (install + suite).
# Both create ./.venv on first use and are safe to repeat.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install run test test-fast lint clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep,keras]"

run: install
	$(BIN)/leukexp-train $(ARGS)

lint: install
	$(BIN)/ruff check leukexp tests scripts hydra_plugins

# two pytest workers: the slow cases spend much of their time waiting on subprocesses and servers (14 min instead
# of 16 for the whole suite on this project's 2-core machine)
test: lint
	$(BIN)/python -m pytest -n 2 $(ARGS)

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

clean-cache:
	rm -rf cache
