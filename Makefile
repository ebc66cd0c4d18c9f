# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-eval bench-overhead bench-scale bench-gpu lint clean chromium

# Re-installs only when the package metadata or the pins change; a second run is a no-op.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on disk, never a multi-GB CUDA build
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spherewatch demo

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# The report test renders the HTML report in headless Chromium (Debian's package); install it when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report screenshot test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the screenshot test will be skipped"; }

bench: $(STAMP)
	$(BIN)/python benchmarks/metrics.py

bench-eval: $(STAMP)
	$(BIN)/python benchmarks/evaluation.py

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py

lint: $(STAMP)
	$(BIN)/ruff check monitor integrations tests benchmarks examples

clean:
	rm -rf $(VENV) runs mlruns mlflow.db lightning_logs spherewatch_report .pytest_cache
