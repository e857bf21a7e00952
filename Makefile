# Two commands a newcomer needs: `make demo` and `make test`. Both create and reuse ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
TESTS  := $(VENV)/.installed-test

.PHONY: demo demo-convnext demo-upernet demo-pruning demo-pruning-l1 demo-pruning-slimming demo-pruning-magnitude demo-pruning-lottery demo-pruning-guided demo-pruning-sss demo-pruning-sfp demo-pruning-convnext demo-pruning-thinet demo-pruning-regression demo-anytime test test-fast lint format bench gpu-check install clean-demo

# The demo needs only the package; the tests add the PyTorch reference (torch, timm) for parity checks.
$(BASE): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(TESTS): $(BASE)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(TESTS)

# The embedded demos, no network. `make demo`: one per line, each with its table or picture: ConvNeXt on digits,
# Network Slimming's pruning table on digits, ADP-C on digit_scenes (its table and anytime curve); every job ends
# with its wall and CPU time. `make demo LINE=convnext|pruning|anytime` runs one line in full (pruning: every
# method, L1-norm, Network Slimming, unstructured magnitude pruning, lottery tickets, guided pruning, Sparse
# Structure Selection, soft filter pruning, the traced structured and unstructured pruning of the demo's ConvNeXt,
# ThiNet, regression-based reconstruction), `LINE=all` every line in full, `LINE=pruning-l1` one experiment,
# `LINE=upernet` ConvNeXt + UperNet on digit_scenes (not in the default).
# Rerunning resumes the same workdirs; `make clean-demo` starts over.
LINE ?=
DEMO_DIR ?= workdirs
DEMO_DEFAULT := convnext pruning-slimming anytime
DEMO_LINES := $(if $(LINE),$(if $(filter all,$(LINE)),convnext upernet pruning anytime,$(LINE)),$(DEMO_DEFAULT))

demo: $(BASE)
	@start=$$(date +%s); for line in $(DEMO_LINES); do $(MAKE) --no-print-directory demo-$$line || exit 1; done; \
	  s=$$(( $$(date +%s) - start )); echo "make demo ($(DEMO_LINES)): done in $$((s / 60)) min $$((s % 60)) s in all"

demo-convnext: $(BASE)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/digits.py --workdir=$(DEMO_DIR)/convnext_digits

# ConvNeXt + UperNet segmentation on digit_scenes, then its table (beside the anytime HRNet) and scene.png.
demo-upernet: $(BASE)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/upernet_digit_scenes.py --workdir=$(DEMO_DIR)/upernet_digit_scenes
	$(BIN)/python -m convnext_jax.upernet_demo --config=configs/convnext/upernet_digit_scenes.py --workdir=$(DEMO_DIR)/upernet_digit_scenes

demo-pruning: demo-pruning-l1 demo-pruning-slimming demo-pruning-magnitude demo-pruning-lottery demo-pruning-guided demo-pruning-sss \
  demo-pruning-sfp demo-pruning-convnext demo-pruning-thinet demo-pruning-regression

demo-pruning-l1: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_l1.py --workdir=$(DEMO_DIR)/pruning_digits_l1

demo-pruning-slimming: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_slimming.py --workdir=$(DEMO_DIR)/pruning_digits_slimming

demo-pruning-magnitude: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_magnitude.py --workdir=$(DEMO_DIR)/pruning_digits_magnitude

demo-pruning-lottery: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_lottery.py --workdir=$(DEMO_DIR)/pruning_digits_lottery

demo-pruning-guided: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_guided.py --workdir=$(DEMO_DIR)/pruning_digits_guided

demo-pruning-sss: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_sss.py --workdir=$(DEMO_DIR)/pruning_digits_sss

# ConvNeXt: group-L1 structured, then unstructured magnitude pruning of the same trained model (its large phase)
demo-pruning-convnext: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_convnext.py --workdir=$(DEMO_DIR)/pruning_digits_convnext
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_convnext_magnitude.py \
	  --workdir=$(DEMO_DIR)/pruning_digits_convnext_magnitude --config.init_from=$(DEMO_DIR)/pruning_digits_convnext/seed0/large

demo-pruning-sfp: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_sfp.py --workdir=$(DEMO_DIR)/pruning_digits_sfp

demo-pruning-thinet: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_thinet.py --workdir=$(DEMO_DIR)/pruning_digits_thinet

demo-pruning-regression: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_regression.py \
	  --workdir=$(DEMO_DIR)/pruning_digits_regression

demo-anytime: $(BASE)
	$(BIN)/python -m anytime_jax.main --config=configs/anytime/digit_scenes.py --workdir=$(DEMO_DIR)/anytime_digit_scenes

clean-demo:
	rm -rf $(DEMO_DIR)/convnext_digits $(DEMO_DIR)/upernet_digit_scenes $(DEMO_DIR)/pruning_digits_l1 \
	  $(DEMO_DIR)/pruning_digits_slimming $(DEMO_DIR)/pruning_digits_magnitude $(DEMO_DIR)/pruning_digits_lottery \
	  $(DEMO_DIR)/pruning_digits_guided $(DEMO_DIR)/pruning_digits_sss $(DEMO_DIR)/pruning_digits_sfp \
	  $(DEMO_DIR)/pruning_digits_convnext \
	  $(DEMO_DIR)/pruning_digits_convnext_magnitude $(DEMO_DIR)/pruning_digits_thinet \
	  $(DEMO_DIR)/pruning_digits_regression $(DEMO_DIR)/anytime_digit_scenes

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

# On a GPU (under 10 min): each line's main model a few steps in fp32 and bf16 (bf16 within a stated tolerance of
# fp32), then the GPU benchmark rows into benchmarks/RESULTS_GPU.md. Without a GPU: one line, exit 0.
gpu-check: $(TESTS)
	$(BIN)/python scripts/gpu_check.py
