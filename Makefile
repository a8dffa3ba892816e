# metcli: make demo (the pipeline on the built-in synthetic cohort) and make test.
# Both create the virtual environment .venv in the checkout from setup.cfg when needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metcli-installed
DEMO ?= demo
PYTEST_ARGS ?=

BIDS_VALIDATOR_VERSION ?= 1.15.0

.PHONY: install demo test tools clean-demo

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,nnunet,cnn]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/run_demo.sh $(DEMO)

# Optional tools some tests use (they skip where these are absent): the official BIDS
# validator (npm), installed under .tools/ where node and npm are present.
tools:
	@if [ -x .tools/node_modules/.bin/bids-validator ]; then :; \
	elif ! command -v npm >/dev/null 2>&1; then echo "npm not found: the BIDS validator tests will skip"; \
	else npm install --silent --no-audit --no-fund --prefix .tools \
		bids-validator@$(BIDS_VALIDATOR_VERSION) >/dev/null 2>&1 \
		|| echo "could not install the BIDS validator: its tests will skip"; fi

test: $(STAMP) tools
	$(BIN)/python -m pytest --durations=10 $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO)
