# Every target does its own setup: virtualenvs with pinned packages.
# `make demo` runs the local simulation; `make test` runs every test and check.

PYTHON ?= $(shell tools/find-python)
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .venv-checkov
SAM_VENV := .venv-sam

.PHONY: demo test unit lint pytest checkov sam-validate iam-simulate build invoke-scaler invoke-reaper image lab clean

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

# The IAM evaluator the tests judge the template's policies with (tests/test_iam_behaviour.py):
# an npm package pinned with its integrity hashes in package-lock.json. `npm ci` installs exactly
# that, from npm's cache when it holds the packages (--prefer-offline).
IAM_SIMULATE := tools/iam-simulate
$(IAM_SIMULATE)/node_modules/.stamp: $(IAM_SIMULATE)/package-lock.json
	npm ci --prefix $(IAM_SIMULATE) --prefer-offline --no-audit --no-fund --ignore-scripts
	touch $@

iam-simulate: $(IAM_SIMULATE)/node_modules/.stamp

demo: $(BIN)/.stamp
	PYTHONPATH=functions $(BIN)/python -m simulation --label stock --compare baked:boot_path=baked $(ARGS)

test: lint checkov pytest

# `make lab`: boots the real user-data in a Debian 12 VM under QEMU, every scenario, one VM at
# a time (`ARGS='--list'`, `ARGS='--scenario NAME'`). The image is built once, as root, into
# ~/.cache/buildkite-autoscaler-lab. Needs qemu-system-x86, qemu-utils and mmdebstrap.
lab: $(BIN)/.stamp
	PYTHONPATH=functions:. $(BIN)/python -m lab $(ARGS)

lint: $(BIN)/.stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck userdata/*.sh userdata/lib/*.sh userdata/steps/*.sh tests/stubs/*.sh lab/guest/*.sh
	$(BIN)/cfn-lint template.yaml
	$(MAKE) sam-validate

checkov: $(CHECKOV_VENV)/bin/.stamp
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml

# Every test, one worker per core; a test file stays on one worker (its module fixtures,
# such as the SAM build, are made once).
pytest: $(BIN)/.stamp $(SAM_VENV)/bin/.stamp $(IAM_SIMULATE)/node_modules/.stamp
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" $(BIN)/pytest -n auto --dist loadfile

# The fast tier, for the edit-test loop: the pure decisions (planner, pool, reaping, effects,
# jobs, schedules, configuration) and the instance scripts under stubs: whole modes, their
# plans, and each step alone (test_step_*, test_common_lib). No SAM, no IAM simulator, no
# simulation.
UNIT_TESTS := $(addprefix tests/test_,$(addsuffix .py,planner pool_planner reaping effects jobs schedules \
	config redact launching buildkite bootstrap_script bootstrap_plan spot_watch pool_instance lab_agent lab_pieces \
	common_lib $(addprefix step_,settings apt aws_cli nix agent root_mode secrets image pool completion units)))

unit: $(BIN)/.stamp
	$(BIN)/pytest -n auto --dist loadfile $(UNIT_TESTS)

# ---- SAM: validate, build without Docker, run a handler in-process.
SAM := $(SAM_VENV)/bin/sam
# The Lambda's platform, whatever this machine is: arm64 wheels for CPython 3.13.
LAMBDA_WHEELS := --platform manylinux2014_aarch64 --python-version 3.13 --implementation cp --only-binary=:all:

sam-validate: $(SAM_VENV)/bin/.stamp
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(SAM) validate --lint

build: $(SAM_VENV)/bin/.stamp
	$(SAM) build

# Run by `sam build` (BuildMethod: makefile) from the repository root, once per function
# (SAM does not share the build between functions); every target makes the same artifact:
# the pinned dependencies, the packages (autoscaler/, and instance/, which the image bake
# runs from this artifact) and userdata/. Bytecode is compiled when this
# Python is the runtime's 3.13, since Lambda cannot write it at cold start.
build-ScalerFunction build-ReaperFunction build-QueueCheckFunction build-ImageParameterFunction:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile $(LAMBDA_WHEELS) \
		--target "$(ARTIFACTS_DIR)" -r functions/requirements.txt
	cp -R functions/autoscaler functions/instance userdata "$(ARTIFACTS_DIR)/"
	find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +
	if $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))'; then \
		$(PYTHON) -m compileall -q --invalidation-mode unchecked-hash "$(ARTIFACTS_DIR)"; fi

# `make invoke-scaler EVENT=events/scaler-scheduled.json STACK=<stack>` (or ENV_FILE=<sam env-vars file>):
# the handler in this process against real AWS, with the deployed function's environment.
# OFFLINE=1: against moto and a loopback metrics fake instead, fed by SCENARIO, for POLLS polls
# of simulated time (ENV_FILE defaults to events/env.json); no account, no Docker, no network.
INVOKE_SOURCE = $(if $(STACK),--stack $(STACK)) $(if $(ENV_FILE),--env-file $(ENV_FILE))
INVOKE_OFFLINE = $(if $(OFFLINE),--offline --scenario $(or $(SCENARIO),$(1)) $(if $(POLLS),--polls $(POLLS)))

invoke-scaler: $(BIN)/.stamp
	$(BIN)/python tools/invoke.py ScalerFunction $(or $(EVENT),events/scaler-dry-run.json) \
		$(INVOKE_SOURCE) $(call INVOKE_OFFLINE,events/scenarios/burst.json)

invoke-reaper: $(BIN)/.stamp
	$(BIN)/python tools/invoke.py ReaperFunction $(or $(EVENT),events/reaper-dry-run.json) \
		$(INVOKE_SOURCE) $(call INVOKE_OFFLINE,events/scenarios/stuck.json)

# `make image STACK=<stack>`: bake new agent images now (both architectures), instead of
# waiting for the weekly schedule. Each takes about 20-40 minutes; the launch templates
# use a new image as soon as Image Builder writes its id to the image parameter.
image:
	@test -n "$(STACK)" || { echo "usage: make image STACK=<stack name>" >&2; exit 2; }
	for output in X86ImagePipelineArn ArmImagePipelineArn; do \
		arn=$$(aws cloudformation describe-stacks --stack-name "$(STACK)" \
			--query "Stacks[0].Outputs[?OutputKey=='$$output'].OutputValue" --output text) && \
		aws imagebuilder start-image-pipeline-execution --image-pipeline-arn "$$arn" || exit 1; \
	done

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(SAM_VENV) $(IAM_SIMULATE)/node_modules .aws-sam .pytest_cache .ruff_cache .hypothesis out
