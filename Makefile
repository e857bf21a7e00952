# Two commands a newcomer needs: `make demo` and `make test`. Both create and reuse ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_WORKDIR ?= workdirs/convnext_digits

.PHONY: demo test bench install clean-demo

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# Trains ConvNeXt on the embedded digits data (prepared on first use, no network). Rerunning resumes the
# same workdir; `make clean-demo` starts over.
demo: $(STAMP)
	$(BIN)/python -m convnext_jax.main --config=configs/convnext/digits.py --workdir=$(DEMO_WORKDIR)

clean-demo:
	rm -rf $(DEMO_WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all
