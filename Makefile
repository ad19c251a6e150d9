# Two entry points for a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FACEAGE_DATA ?= ../shared/datasets/utkface/UTKFace
export FACEAGE_DATA

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Train a small model for 2 epochs on a subset of UTKFace, evaluate it, print the metrics.
demo: $(STAMP)
	$(BIN)/faceage train --config configs/demo.yaml --data "$(FACEAGE_DATA)" --out runs/demo --overwrite
	$(BIN)/faceage evaluate --model runs/demo --data "$(FACEAGE_DATA)" --split test --json runs/demo/metrics.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
