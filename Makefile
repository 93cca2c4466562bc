# Two commands do everything on a fresh machine: `make distill` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
RUN ?= runs/fashion-mnist-ipc1
export CUDA_HOME ?= /usr/local/cuda

.PHONY: setup data build distill test bench carry-data gpu-dry-run clean

setup: $(VENV)/.deps build data

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The compiled extension (CPU kernels, plus CUDA kernels when torch has CUDA and $CUDA_HOME/bin/nvcc exists).
# pip -q hides the build's own messages, so the last line says which kernels were built, loudly when torch
# has CUDA and the build has none.
build: $(VENV)/.built
$(VENV)/.built: $(VENV)/.deps setup.py $(shell find csrc -type f 2>/dev/null)
	$(PY) -m pip install -q -e . --no-build-isolation --no-deps
	$(PY) -c "import udd_fast._extension as e; e.check_build()"
	touch $@

# Fashion-MNIST offline from the Debian package when apt is there; otherwise torchvision downloads it.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist || \
		echo "dataset-fashion-mnist not installable; Fashion-MNIST will be downloaded into ./data"; fi

distill: setup
	$(PY) -m udd_fast distill --dataset fashion-mnist --ipc 1 --preset cpu-quick --out $(RUN) --overwrite --evaluate --baseline \
		--eval-precision auto

test: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) -m pytest bench --benchmark-only -q

# Fashion-MNIST for bench/gpu_check.sh on a machine without it: carry the git-ignored .carry folder along.
carry-data: data
	mkdir -p .carry/fashion-mnist
	cp $(FMNIST)/*-ubyte.gz .carry/fashion-mnist/

# Every step of the GPU check at toy size on CPU (results in a temporary folder unless OUT is set).
gpu-dry-run: setup carry-data
	bash bench/gpu_check.sh --cpu-dry-run

clean:
	rm -rf build *.egg-info udd_fast/_C*.so $(VENV)/.built
