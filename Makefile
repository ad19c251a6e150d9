# Two entry points for a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FACEAGE_DATA ?= ../shared/datasets/utkface/UTKFace
export FACEAGE_DATA

.PHONY: demo demo-train serve test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $(STAMP)

# Ages and genders for the faces in a sample photo, with the shipped model: no dataset, no
# network. The photo is scikit-image's public-domain 'astronaut' (NASA).
demo: $(STAMP)
	mkdir -p runs/demo-photo
	$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('runs/demo-photo/astronaut.png')"
	$(BIN)/faceage predict runs/demo-photo/astronaut.png --annotate runs/demo-photo
	@echo "annotated photo: runs/demo-photo/astronaut.annotated.png"

# Train a small model for 2 epochs on a subset of UTKFace, evaluate it, print the metrics.
demo-train: $(STAMP)
	$(BIN)/faceage train --config demo --data "$(FACEAGE_DATA)" --out runs/demo --overwrite
	$(BIN)/faceage evaluate --model runs/demo --data "$(FACEAGE_DATA)" --split test --json runs/demo/metrics.json

# The web page and API on http://127.0.0.1:8000 (Ctrl+C stops it).
serve: $(STAMP)
	$(BIN)/faceage serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
