# posttrain: set-up, the tiny demo, tests, and one target per stage.
#   make demo                      install, build the tiny default, run both chains
#   make check                     the fast tier: every test that needs neither the tiny build nor a trained chain
#   make test                      install, run the whole test suite (CPU), on two pytest workers
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

PYTEST_WORKERS ?= 2

.PHONY: install demo check test sft dpo rlvr think instruct bench tiny clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt requirements/gpu.txt
	./scripts/install.sh "$(PYTHON)" "$(VENV)" "$(REQS)" "$(TORCH_INDEX)"
	rm -f $(VENV)/.installed-*
	touch $@

tiny: install
	$(BIN)/posttrain tiny --out $(TINY)

demo: install
	$(BIN)/posttrain demo --tiny $(TINY) --run-dir $(RUN_DIR)

# Two workers, handed tests in the order tests/conftest.py gives (`run_order`; --no-loadscope-reorder keeps it).
test: install chromium
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder -m "not solo" --durations=30 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m solo --durations=5 $(PYTEST_ARGS)

check: install chromium
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder -m "not tiny and not solo" --durations=15 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "solo and not tiny" --durations=5 $(PYTEST_ARGS)

# The report test renders HTML in headless Chromium (Debian package); installed here when missing and root.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; \
	  else echo "warning: chromium not found; the report rendering test needs it (apt-get install chromium)"; fi; }

sft dpo rlvr: install
	@test -n "$(RECIPE)" || { echo "usage: make $@ RECIPE=recipes/... [OVERRIDES='key=value ...']"; exit 2; }
	$(BIN)/posttrain $@ --recipe $(RECIPE) $(OVERRIDES)

$(TINY)/build.json: | install
	$(BIN)/posttrain tiny --out $(TINY)

# The tiny chains; the Instruct SFT starts from the Think SFT checkpoint (unchanged stages are skipped).
think: install $(TINY)/build.json
	$(BIN)/posttrain pipeline --variant think --recipes recipes/tiny/think --tiny $(TINY) --run-dir $(RUN_DIR)/think $(OVERRIDES)

instruct: think
	$(BIN)/posttrain pipeline --variant instruct --recipes recipes/tiny/instruct --tiny $(TINY) \
	  --think-run $(RUN_DIR)/think --run-dir $(RUN_DIR)/instruct $(OVERRIDES)

bench: install
	@for script in $(filter-out bench/gpu_check.py,$(wildcard bench/*.py)); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
