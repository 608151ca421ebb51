# Targets CI calls: `make test` (the README's test command). Everything runs in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := $(wildcard pvae tests benchmarks examples docs tools)

.PHONY: install run test test-gpu lint format bench bench-gpu docs notebooks results clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## train the default VAE on the embedded digits into runs/default
	$(BIN)/pvae train --out runs/default-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: $(STAMP)
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

test: $(STAMP) lint
	$(BIN)/pytest -q --doctest-modules pvae tests

test-gpu: $(STAMP)  ## on a CUDA machine: the tests marked cuda (skipped elsewhere, as in `make test`)
	$(BIN)/pytest -q -m cuda tests

bench: $(STAMP)  ## training step, log p(x) and AIS throughput: pvae vs Pyro vs hand-written PyTorch
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/log_px.py
	$(BIN)/python benchmarks/two_layer_step.py
	$(BIN)/python benchmarks/ais.py

bench-gpu: $(STAMP)  ## on a CUDA machine: step table, a Fashion-MNIST epoch, k=5000 log p(x), DDP (fails fast on CPU)
	$(BIN)/python benchmarks/gpu.py

docs: $(STAMP)  ## build the documentation site (offline) into docs/_build/html
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

notebooks: $(STAMP)  ## re-execute examples/*.ipynb in full mode, in place, and stamp them (minutes)
	$(BIN)/python tools/run_notebooks.py

RESULTS_OUT ?= runs/results
results: $(STAMP)  ## every shipped config on Fashion-MNIST, evaluated alike, into docs/results.md (about 2 h on 2 cores)
	$(BIN)/python benchmarks/results.py --out $(RESULTS_OUT) --epochs 10 --seeds 0 1 2 \
	    --k 5000 --subset 500 --ais-subset 20 \
	    --for m2-fashion-mnist.epochs=1 m2-fashion-mnist.seeds=0 m2-fashion-mnist.k=500 \
	        sbn-vimco.epochs=1 sbn-vimco.seeds=0 \
	    --skip "ladder-conv-cifar-small=a conv hierarchy for CIFAR-10; about 2.5 h per Fashion-MNIST epoch on 2 CPU cores (6 images/s measured)" \
	        "ladder-conv-cifar-gpu=the GPU-sized conv hierarchy; no GPU here"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache docs/_build
