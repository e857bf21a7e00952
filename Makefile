# Two commands a newcomer needs: `make demo` and `make test`. Both create and reuse ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
TESTS  := $(VENV)/.installed-test

# The pruning methods with one digits config each (configs/pruning/digits_<method>.py, `make demo LINE=pruning-<method>`)
PRUNING_DEMOS := l1 slimming magnitude lottery guided sss sfp thinet regression

.PHONY: demo demo-convnext demo-upernet demo-upernet-train demo-pruning $(addprefix demo-pruning-,$(PRUNING_DEMOS)) demo-pruning-convnext demo-anytime \
  test test-fast lint format bench gpu-check install clean-demo

# The demo needs only the package (no TensorFlow: the `tf` extra, to prepare TFDS datasets); the tests add the PyTorch
# reference (torch, timm) for parity checks and TensorFlow for the cifar/cityscapes stand-ins they prepare.
$(BASE): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

# The test install is the base one plus the extra, in one pip run (resolving and building the editable package once,
# not twice, on a fresh clone), so it marks the base install done too.
$(TESTS): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(BASE) $@

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

# The jobs run DEMO_JOBS at a time, side by side (each compiles on one core while another trains), and each job's
# output is printed whole when it ends (GNU make's --output-sync; a make without it runs them one by one).
DEMO_JOBS ?= 3
DEMO_PARALLEL := $(if $(filter output-sync,$(.FEATURES)),-j$(DEMO_JOBS) --output-sync=target)

DEMO_KNOWN := convnext upernet pruning $(addprefix pruning-,$(PRUNING_DEMOS) convnext) anytime
ifneq ($(filter demo,$(MAKECMDGOALS)),)
ifneq ($(filter-out $(DEMO_KNOWN),$(DEMO_LINES)),)
$(error make demo LINE=$(LINE): no demo named $(filter-out $(DEMO_KNOWN),$(DEMO_LINES)) (one of: all $(DEMO_KNOWN)))
endif
endif

demo: $(BASE)
	@start=$$(date +%s); \
	  echo "make demo: $(DEMO_LINES), $(if $(DEMO_PARALLEL),up to $(DEMO_JOBS) side by side (DEMO_JOBS); each prints its output when it ends,one job at a time)"; \
	  $(MAKE) --no-print-directory $(DEMO_PARALLEL) $(addprefix demo-,$(DEMO_LINES)) || exit 1; \
	  s=$$(( $$(date +%s) - start )); echo "make demo ($(DEMO_LINES)): done in $$((s / 60)) min $$((s % 60)) s in all"

demo-convnext: $(BASE)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/digits.py --workdir=$(DEMO_DIR)/convnext_digits

# ConvNeXt + UperNet segmentation on digit_scenes, then its table (beside the anytime HRNet's last exit, read from
# DEMO_DIR/anytime_digit_scenes/anytime.json: when the anytime demo runs in the same make, e.g. LINE=all, the
# table waits for it) and scene.png.
demo-upernet: demo-upernet-train $(filter demo-anytime,$(MAKECMDGOALS))
	$(BIN)/python -m convnext_jax.upernet_demo --config=configs/convnext/upernet_digit_scenes.py --workdir=$(DEMO_DIR)/upernet_digit_scenes

demo-upernet-train: $(BASE)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/upernet_digit_scenes.py --workdir=$(DEMO_DIR)/upernet_digit_scenes

# One experiment per pruning method on digits (PRUNING_DEMOS, above): configs/pruning/digits_<method>.py into
# DEMO_DIR/pruning_digits_<method>; ConvNeXt's two (below) share one trained model
demo-pruning: $(addprefix demo-pruning-,$(PRUNING_DEMOS)) demo-pruning-convnext

$(addprefix demo-pruning-,$(PRUNING_DEMOS)): demo-pruning-%: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_$*.py --workdir=$(DEMO_DIR)/pruning_digits_$*

# ConvNeXt: group-L1 structured, then unstructured magnitude pruning of the same trained model (its large phase)
demo-pruning-convnext: $(BASE)
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_convnext.py --workdir=$(DEMO_DIR)/pruning_digits_convnext
	$(BIN)/python -m pruning_jax.main --config=configs/pruning/digits_convnext_magnitude.py \
	  --workdir=$(DEMO_DIR)/pruning_digits_convnext_magnitude --config.init_from=$(DEMO_DIR)/pruning_digits_convnext/seed0/large

demo-anytime: $(BASE)
	$(BIN)/python -m anytime_jax.main --config=configs/anytime/digit_scenes.py --workdir=$(DEMO_DIR)/anytime_digit_scenes

clean-demo:
	rm -rf $(DEMO_DIR)/convnext_digits $(DEMO_DIR)/upernet_digit_scenes $(DEMO_DIR)/anytime_digit_scenes \
	  $(addprefix $(DEMO_DIR)/pruning_digits_,$(PRUNING_DEMOS) convnext convnext_magnitude)

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
