# leukexp's two entry points: `make run` (install + the default study) and `make test` (install + suite).
# Both create ./.venv on first use and are safe to repeat.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install run test test-fast lint docs engines clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# uv installs from its cache in under a minute what pip unpacks in four (torch's CUDA libraries are gigabytes); it
# reads no pip.conf, so pip's package sources are passed on (scripts/uv_from_pip.py); where uv cannot be had, pip.
# Modules are byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, nothing
# would cache them later and every process would compile torch again
PACKAGES := torch==2.14.1 torchvision==0.29.1 -e ".[dev,sweep,keras,ray,server,docs]"
install: $(BIN)/python
	@if $(BIN)/python -m pip install --quiet uv >/dev/null 2>&1; then \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
	    $$($(BIN)/python scripts/uv_from_pip.py) $(PACKAGES); \
	else \
	  $(BIN)/python -m pip install --quiet $(PACKAGES); \
	fi

run: install
	$(BIN)/leukexp-train $(ARGS)

# ruff everywhere; mypy over the package (its settings in pyproject.toml: no blanket ignore, library stubs where the
# libraries ship them)
lint: install
	$(BIN)/ruff check leukexp tests scripts hydra_plugins
	$(BIN)/mypy

# the manual as a site in site/ (offline; --strict: a broken link, anchor or docstring fails it), the configuration
# page first checked against the configs and the schema it is generated from
docs: install
	$(BIN)/python scripts/config_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# the job engines the tests start for real (a one-node Slurm cluster with accounting): Debian's packages, installed
# once where this runs as root with apt; elsewhere their tests skip and say why
ENGINE_PACKAGES := slurm-wlm slurmdbd munge mariadb-server postgresql
engines:
	@command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
	  && { command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; } \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && export DEBIAN_FRONTEND=noninteractive \
	       && { apt-get install -y -q $(ENGINE_PACKAGES) >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(ENGINE_PACKAGES) >/dev/null 2>&1; }; }; } \
	  || echo "engines: Slurm or PostgreSQL could not be installed here (root and apt needed); their tests skip and say why"

# two pytest workers: the slow cases spend much of their time waiting on subprocesses and servers (on this project's
# 2-core machine the suite took 23 min with two, 26 with three: the cores are busy enough). mypy runs beside them (a cold check is 40 s of one
# core, most of it while the suite's workers wait), its verdict and output after theirs; either failing fails
test: install docs engines
	$(BIN)/ruff check leukexp tests scripts hydra_plugins
	@log=$$(mktemp); $(BIN)/mypy > $$log 2>&1 & types=$$!; \
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=30 $(ARGS); tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat $$log; rm -f $$log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

clean-cache:
	rm -rf cache
