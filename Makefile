# posttrain: set-up, the tiny demo, tests, and one target per stage.
#   make demo                      install, build the tiny default, run both chains
#   make test                      install, run the whole test suite (CPU)
#   make sft RECIPE=path OVERRIDES="optim.lr=1e-5 ..."   (likewise dpo, rlvr)
#   make install GPU=1             CUDA torch + the vllm package instead of the CPU builds

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
GPU    ?=
# Extra index for torch wheels, e.g. https://download.pytorch.org/whl/cpu on a machine without a local wheel.
TORCH_INDEX ?=
TINY   ?= runs/tiny
RUN_DIR ?= runs/demo
RECIPE ?=
OVERRIDES ?=
PYTEST_ARGS ?=

REQS  := requirements/$(if $(GPU),gpu,cpu).txt
STAMP := $(VENV)/.installed-$(if $(GPU),gpu,cpu)

.PHONY: install demo test sft dpo rlvr think instruct bench tiny clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt requirements/gpu.txt
	./scripts/install.sh "$(PYTHON)" "$(VENV)" "$(REQS)" "$(TORCH_INDEX)"
	rm -f $(VENV)/.installed-*
	touch $@

tiny: install
	$(BIN)/posttrain tiny --out $(TINY)

demo: install
	$(BIN)/posttrain demo --tiny $(TINY) --run-dir $(RUN_DIR)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

sft dpo rlvr: install
	@test -n "$(RECIPE)" || { echo "usage: make $@ RECIPE=recipes/... [OVERRIDES='key=value ...']"; exit 2; }
	$(BIN)/posttrain $@ --recipe $(RECIPE) $(OVERRIDES)

think instruct: install
	$(BIN)/posttrain pipeline --variant $@ --recipes recipes/tiny/$@ --base $(TINY)/base --run-dir $(RUN_DIR)/$@ $(OVERRIDES)

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
