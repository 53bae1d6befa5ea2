# Two commands on a fresh machine: `make demo` and `make test`. Each creates or reuses .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench gpu-check lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptlab demo

test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

# P1-P5 against ../shared/peer/seed_recipe.py (about 25 minutes on 2 busy cores): bench/results/*.json and the
# table in bench/README.md. Not part of `make test`; tests/test_bench.py runs the same code on a tiny model.
# Pass options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--only P1,P4 --repeats 5".
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# On a CUDA machine: train, evaluate and serve a ~0.5B random Qwen2-shaped model in bf16 (bench/gpu_check.py);
# elsewhere it says in one line that there is no GPU.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs test-artifacts
