# Two commands a new user runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Blender for the add-on's tests: the bpy 4.5 LTS wheel in its own environment (Python 3.11 and
# numpy < 2, like Blender's own Python); the backend's pins never constrain it, nor the reverse.
BVENV  := .venv-blender
BPY    := $(BVENV)/bin/python
BSTAMP := $(BVENV)/.installed
# ... and the newest bpy 5.x wheel (Python 3.13, Blender's own numpy 2) in another: `make test` runs the
# Blender suite on both, so the add-on is tested on the oldest and newest Python/API it supports.
# (a real interpreter: pyenv's shim for python3.13 exists even where that version is not enabled, and fails)
PYTHON313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 \
             /usr/bin/python3.13) $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null))
BVENV5  := .venv-blender5
BPY5    := $(BVENV5)/bin/python
BSTAMP5 := $(BVENV5)/.installed
# The Khronos glTF validator (npm), project-local, for the .glb export tests.
NODE_STAMP := tools/node_modules/.installed
# The web player (web/: three.js + Spark, esbuild, Playwright driving Debian's chromium, spz-js, Babylon.js)
# for the engine-export tests; Playwright never downloads a browser of its own.
WEB_STAMP := web/node_modules/.installed

.PHONY: test test-backend test-blender demo demo-blender install addon clean gpu-check web

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on this project's machines the local CPU build, elsewhere the registry's build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,scale]"
	# ColorVideoVDP for `evaluate` (JOD) without torchvision, whose registry build needs CUDA torch
	$(PY) -m pip install -q --no-deps "cvvdp==0.5.7"
	touch $(STAMP)

$(BSTAMP): Makefile
	test -x $(BPY) || $(PYTHON) -m venv $(BVENV)
	$(BPY) -m pip install -q --upgrade pip
	$(BPY) -m pip install -q "bpy==4.5.*" "numpy<2" "pytest>=8" "safetensors==0.8.0"
	touch $(BSTAMP)

$(BSTAMP5): Makefile
	@test -n "$(PYTHON313)" || { echo "Python 3.13 is needed for the bpy 5.x tests: install it or pass PYTHON313=/path/to/python3.13"; exit 1; }
	test -x $(BPY5) || $(PYTHON313) -m venv $(BVENV5)
	$(BPY5) -m pip install -q --upgrade pip
	$(BPY5) -m pip install -q "bpy==5.3.*" "pytest>=8" "safetensors==0.8.0"
	touch $(BSTAMP5)

$(NODE_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)
	cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $(WEB_STAMP)

web: $(WEB_STAMP)

install: $(STAMP)

# the Blender extension zip: dist/mvp4d-<version>.zip
addon: $(STAMP)
	$(PY) build_addon.py

test: $(STAMP) $(BSTAMP) $(BSTAMP5) $(NODE_STAMP) $(WEB_STAMP)
	$(PY) -m ruff check backend tests mvp4d_blender build_addon.py
	$(PY) -m pytest -q tests
	$(BPY) -m pytest -q tests/blender
	$(BPY5) -m pytest -q tests/blender

test-backend: $(STAMP)
	$(PY) -m pytest -q tests

test-blender: $(STAMP) $(BSTAMP) $(BSTAMP5) $(NODE_STAMP)
	$(BPY) -m pytest -q tests/blender
	$(BPY5) -m pytest -q tests/blender

# the main job on the embedded default: the backend's job in out/demo (contact sheet, avatar, PLYs),
# then its avatar in Blender through the add-on (out/demo/blender: .blend, render, .glb, .ply)
demo: $(STAMP) $(BSTAMP)
	$(PY) -m backend demo --out out/demo
	$(BPY) tools/blender_demo.py --out out/demo/blender --avatar out/demo/outputs/avatar.safetensors

# the embedded default end to end in Blender: out/demo/blender/{avatar.blend,render.png,avatar.glb,avatar.ply}
demo-blender: $(STAMP) $(BSTAMP)
	$(BPY) tools/blender_demo.py --out out/demo/blender

# One short run on a CUDA GPU that measures every GPU path (< 8 min): docs/benchmarks/gpu-<date>.json and its
# table in docs/benchmarks.md. Without CUDA it says so and exits 2. Options: tools/gpu_check.sh --help.
gpu-check: $(STAMP)
	PYTHON=$(PY) bash tools/gpu_check.sh

clean:
	rm -rf $(VENV) $(BVENV) $(BVENV5) out dist build *.egg-info tools/node_modules
