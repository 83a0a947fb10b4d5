# Every target does its own setup: virtualenvs with pinned packages.
# `make demo` runs the local simulation; `make test` runs every test and check.

PYTHON ?= $(shell tools/find-python)
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .venv-checkov
SAM_VENV := .venv-sam

.PHONY: demo test lint pytest checkov sam-validate build invoke-scaler invoke-reaper clean

$(BIN)/.stamp: requirements-dev.txt functions/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(CHECKOV_VENV)/bin/.stamp: tools/checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/checkov.txt
	touch $@

$(SAM_VENV)/bin/.stamp: tools/sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/sam.txt
	touch $@

demo: $(BIN)/.stamp
	$(BIN)/python -m simulation

test: lint checkov pytest

lint: $(BIN)/.stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck userdata/*.sh
	$(BIN)/cfn-lint template.yaml

checkov: $(CHECKOV_VENV)/bin/.stamp
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --framework cloudformation -f template.yaml

pytest: $(BIN)/.stamp $(SAM_VENV)/bin/.stamp
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" $(BIN)/pytest

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(SAM_VENV) .aws-sam .pytest_cache .ruff_cache .hypothesis out
