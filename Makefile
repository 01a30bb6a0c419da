# det3d: `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch; never let pip resolve an unpinned torch (it pulls CUDA packages).
TORCH  ?= torch==2.13.0
CSRC   := $(shell find det3d/layers/csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' \) 2>/dev/null)

export MAX_JOBS ?= 2

.PHONY: all venv deps build test demo bench lint clean

all: build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Dependencies: torch first (pinned), then everything else, which then finds torch satisfied.
$(VENV)/.stamp-deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip setuptools wheel ninja
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q fvcore iopath yacs pycocotools tifffile opencv-python-headless \
		numpy scipy pyyaml tqdm pytest zarr \
		dask==2026.8.0 distributed==2026.8.0
	touch $@

# det3d in editable mode with det3d._C compiled in place; rebuilt when the C++/CUDA sources change.
$(VENV)/.stamp-build: $(VENV)/.stamp-deps setup.py $(CSRC)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	$(BIN)/python -c "import det3d._C, torch; torch.ops.det3d.nms"
	touch $@

venv deps: $(VENV)/.stamp-deps
build: $(VENV)/.stamp-build

test: build
	$(BIN)/python -m pytest -q tests

demo: build
	$(BIN)/python tools/demo.py

bench: build
	$(BIN)/python bench/ops.py
	$(BIN)/python bench/eval_speed.py

clean:
	rm -rf build det3d/*.so *.egg-info $(VENV)/.stamp-build
