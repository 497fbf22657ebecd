# tinysparse: every command runs inside a local virtual environment (.venv), created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DEVICE ?=
# the best sparse preset by chapter 10's measurements (lessons/10_efficiency_ledger/README.md);
# PRESET=tiny trains the dense model
PRESET ?= tiny-adaptive
NP     ?= 2
ARGS   ?=
MODULE ?=

LESSONS := $(sort $(notdir $(wildcard lessons/[0-9][0-9]_*)))

.PHONY: help install cuda-install test mutation train train-parallel sample bench ledger gpu-check lessons transcripts clean

help:  ## list every target and every chapter
	@echo "tinysparse: a course and library for sparse-activation models"
	@echo ""
	@echo "  make train      train the best sparse preset ($(PRESET), chapter 10) on the built-in corpus,"
	@echo "                  sample, draw its compute map and print one ledger line against the dense"
	@echo "                  tiny model (trained once with the same settings, cached in out/tiny-reference);"
	@echo "                  PRESET=tiny trains the dense model alone"
	@echo "                  (PRESET=tiny|tiny-moe|tiny-adaptive|small, DEVICE=cpu|cuda, ARGS=more flags)"
	@echo "  make train-parallel NP=2  train tiny-moe with its experts spread over NP MPI"
	@echo "                  processes (expert parallelism, chapter 11; PRESET=another MoE preset)"
	@echo "  make sample     print text from the last training run of PRESET"
	@echo "  make test       run the test suite"
	@echo "  make mutation MODULE=tinysparse/training/loop.py"
	@echo "                  mutation testing: plant small bugs in MODULE one at a time, run its"
	@echo "                  tests against each, print the score (killed / total) and every"
	@echo "                  survivor (MODULE may list several files, or path.py::Class.method)"
	@echo "  make bench      time training steps and MoE layers against PyTorch, side by side;"
	@echo "                  ends with the table of issue 16's targets (ARGS=--profile: where"
	@echo "                  the time goes; ARGS='--suite gmm': one suite; --threads N)"
	@echo "  make ledger     FLOPs, bytes and energy per token of the last run of PRESET"
	@echo "                  (ARGS=--train-step counts a training step too)"
	@echo "  make gpu-check  on a machine with a CUDA GPU: kernel tests on the device, timings,"
	@echo "                  a short tiny-moe training (exit 2 where there is no GPU);"
	@echo "                  ARGS=--full adds the checks of a lent GPU (sync-free steps, resume)"
	@echo "  make cuda-install  CuPy + numba-cuda for this machine's driver (DRY_RUN=1: print only;"
	@echo "                  gpu-check and train DEVICE=cuda run it first)"
	@echo "  make install    create .venv and install tinysparse with its dev extra"
	@echo "  make lessons    run every chapter's script in quick mode"
	@echo "  make lesson-NN  run chapter NN's script in full (ARGS=--quick for a fast run)"
	@echo "  make transcript-NN  record chapter NN's full and quick runs (the figures its text"
	@echo "                  quotes; lessons/transcripts.py); make transcripts: every chapter"
	@echo "  make clean      remove the venv, caches and run folders"
	@echo ""
	@echo "Chapters:"
	@for d in $(LESSONS); do echo "  lesson-$${d%%_*}  $$d"; done

# Re-install only when the project's metadata changed: quick and idempotent when done.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot,parallel]'
	@touch $(STAMP)

install: $(STAMP)

# The CuPy wheel of the driver's CUDA major version (cupy-cuda12x or cupy-cuda13x) and numba-cuda;
# idempotent; exit 2 with one line saying which to choose when no driver answers.
CUDA_INSTALL = $(PY) -m tinysparse.bench.cuda_install

cuda-install: $(STAMP)
	$(CUDA_INSTALL) $(if $(DRY_RUN),--dry-run)

# the PyTorch that make bench compares against
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	@touch $(BENCH_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# tools/mutation.py: mutmut over MODULE, only the tests that call each mutated function.
mutation: $(STAMP)
	@if [ -z "$(MODULE)" ]; then echo "name a module: make mutation MODULE=tinysparse/training/loop.py"; exit 2; fi
	$(PY) tools/mutation.py $(MODULE) $(ARGS)

train: $(STAMP)
	$(if $(filter cuda,$(DEVICE)),$(CUDA_INSTALL))
	$(PY) -m tinysparse train --preset $(PRESET) $(if $(DEVICE),--device $(DEVICE)) \
		$(if $(filter tiny small,$(PRESET)),,--vs-dense) $(ARGS)

# Expert parallelism over NP processes (tinysparse/parallel, chapter 11). Open MPI's run-as-root
# settings and --oversubscribe (more ranks than cores) are for this launch only.
PARALLEL_PRESET = $(if $(filter command line environment,$(origin PRESET)),$(PRESET),tiny-moe)
train-parallel: $(STAMP)
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 \
	NUMBA_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(NP) --oversubscribe \
	$(PY) -m tinysparse train --preset $(PARALLEL_PRESET) --parallel expert $(ARGS)

sample: $(STAMP)
	$(PY) -m tinysparse sample --out-dir out/$(PRESET) $(ARGS)

ledger: $(STAMP)
	@test -f out/$(PRESET)/ckpt.json || { echo "error: no run of PRESET=$(PRESET) in out/$(PRESET) yet: train one first with 'make train PRESET=$(PRESET)'" >&2; exit 1; }
	$(PY) -m tinysparse ledger --out-dir out/$(PRESET) $(ARGS)

bench: $(BENCH_STAMP)
	$(PY) -m tinysparse bench $(ARGS)

# Needs a GPU; installs CuPy and numba-cuda for it first (without a driver the install step's
# exit 2 is passed over and gpu_check itself says there is no GPU, exit 2).
# See tinysparse/bench/gpu_check.py; ARGS=--full: the checks to run when a GPU is lent.
gpu-check: $(STAMP)
	$(CUDA_INSTALL) || test $$? -eq 2
	$(PY) -m tinysparse.bench.gpu_check $(ARGS)

lessons: $(STAMP)
	@for d in $(LESSONS); do echo "== $$d"; $(PY) lessons/$$d/run.py --quick || exit 1; done

lesson-%: $(STAMP)
	@d=$$(ls -d lessons/$*_* 2>/dev/null | head -n 1); \
	if [ -z "$$d" ]; then echo "no chapter $* yet: see 'make help'"; exit 2; fi; \
	$(PY) $$d/run.py $(ARGS)

# The runs each chapter's text quotes from (lessons/transcripts.py explains the checks).
transcripts: $(STAMP)
	$(PY) lessons/transcripts.py record all

transcript-%: $(STAMP)
	$(PY) lessons/transcripts.py record $*

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info out mutants
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
