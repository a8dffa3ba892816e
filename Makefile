# metcli: make demo (the pipeline on the built-in synthetic cohort) and make test.
# Both create the virtual environment .venv in the checkout from setup.cfg when needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metcli-installed
DEMO ?= demo
PYTEST_ARGS ?=

.PHONY: install demo test clean-demo

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,nnunet]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/metcli synth $(DEMO) --subjects 12 --seed 0
	$(BIN)/metcli split-lesions $(DEMO)/derivatives/truth $(DEMO)/derivatives/lesions
	@echo "demo done: per-lesion table $(DEMO)/derivatives/lesions/lesions.tsv, tumour burden $(DEMO)/derivatives/lesions/tumour_burden.tsv"

test: $(STAMP)
	$(BIN)/python -m pytest --durations=10 $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO)
