# Two commands a newcomer needs: `make demo` and `make test`. Both create and reuse ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
TESTS  := $(VENV)/.installed-test

.PHONY: demo demo-convnext demo-pruning demo-anytime test test-fast lint format bench install clean-demo

# The demo needs only the package; the tests add the PyTorch reference (torch, timm) for parity checks.
$(BASE): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(TESTS): $(BASE)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(TESTS)

# The embedded demos, no network: ConvNeXt on digits, the pruning tables on digits (L1-norm and Network
# Slimming), then ADP-C on digit_scenes (its table and anytime curve). `make demo LINE=convnext|pruning|anytime`
# runs one. Rerunning resumes the same workdirs; `make clean-demo` starts over.
LINE ?= all
DEMO_DIR ?= workdirs
DEMO_LINES := $(if $(filter all,$(LINE)),convnext pruning anytime,$(LINE))

demo: $(BASE)
	@for line in $(DEMO_LINES); do $(MAKE) --no-print-directory demo-$$line || exit 1; done

demo-convnext: $(BASE)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/digits.py --workdir=$(DEMO_DIR)/convnext_digits

demo-pruning: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_l1.py --workdir=$(DEMO_DIR)/pruning_digits_l1
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_slimming.py --workdir=$(DEMO_DIR)/pruning_digits_slimming

demo-anytime: $(BASE)
	$(BIN)/python -m anytime_jax.main --config=configs/anytime/digit_scenes.py --workdir=$(DEMO_DIR)/anytime_digit_scenes

clean-demo:
	rm -rf $(DEMO_DIR)/convnext_digits $(DEMO_DIR)/pruning_digits_l1 $(DEMO_DIR)/pruning_digits_slimming \
	  $(DEMO_DIR)/anytime_digit_scenes

# The style check (pyproject.toml: pyink + ruff) runs first, so CI holds it; `make format` applies it.
# TEST_WORKERS pytest-xdist processes share the cores (most of a test's time is XLA compiling, one thread);
# each test file stays on one worker, so a file's module-scoped fixtures (a compiled model) are built once.
# TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: lint
	$(PYTEST) tests

# The tests not marked slow (setup.cfg [tool:pytest] markers): the quick check while developing.
test-fast: lint
	$(PYTEST) -m "not slow" tests

lint: $(TESTS)
	$(BIN)/pyink --check --quiet .
	$(BIN)/ruff check --quiet .

format: $(TESTS)
	BIN=$(BIN) scripts/format_all.sh

bench: $(TESTS)
	$(BIN)/python -m benchmarks.run_all
