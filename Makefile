# Two commands a newcomer needs: `make demo` and `make test`. Both create and reuse ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
TESTS  := $(VENV)/.installed-test
DEMO_WORKDIR ?= workdirs/convnext_digits

.PHONY: demo test test-fast lint format bench install clean-demo

# The demo needs only the package; the tests add the PyTorch reference (torch, timm) for parity checks.
$(BASE): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(TESTS): $(BASE)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(TESTS)

# Trains ConvNeXt on the embedded digits data (prepared on first use, no network). Rerunning resumes the
# same workdir; `make clean-demo` starts over.
demo: $(BASE)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/digits.py --workdir=$(DEMO_WORKDIR)

clean-demo:
	rm -rf $(DEMO_WORKDIR)

# The style check (pyproject.toml: pyink + ruff) runs first, so CI holds it; `make format` applies it.
test: lint
	$(BIN)/python -m pytest -q tests

# The tests not marked slow (setup.cfg [tool:pytest] markers): the quick check while developing.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(TESTS)
	$(BIN)/pyink --check --quiet .
	$(BIN)/ruff check --quiet .

format: $(TESTS)
	BIN=$(BIN) scripts/format_all.sh

bench: $(TESTS)
	$(BIN)/python -m benchmarks.run_all
