# Two commands do everything on a fresh clone:  make run  (the pipeline)  and  make test.
# Both create .venv with python3 if it is missing and install the project into it.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install run test lint clean report plots

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (the first time takes a few minutes: torch is large)"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

run: $(INSTALLED)
	dvc repro

# report.md and report_images/ from the last run, compared with main (BASE=<rev> for another)
report: $(INSTALLED)
	python -m naturalist.reporting $(if $(BASE),--base $(BASE))

# dvc plots show, readable offline: dvc_plots/index.html with the vega scripts beside it
plots: $(INSTALLED)
	python -m naturalist.offline_plots show

test: $(INSTALLED)
	ruff check .
	ruff format --check .
	python -m pytest

lint: $(INSTALLED)
	ruff check .
	ruff format --check .

clean:
	rm -rf .pytest_cache .ruff_cache
