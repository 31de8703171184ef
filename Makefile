# rbench: the two commands a newcomer needs are `make setup` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint format bench leaderboard leaderboard-runs clean browser

setup:  ## create .venv and install rbench with its test tools at the tested versions
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@$(BIN)/rbench --version

# Two pytest workers with one torch thread each use a 2-core machine better than one worker
# with two threads (the models are small). Then the robust-accuracy regression check of every
# registered method against leaderboard/baseline.json (two threads: the baseline was made so).
test: lint  ## lint, every CPU test, and the regression check (what CI runs)
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 -m "not gpu" -q
	OMP_NUM_THREADS=2 $(BIN)/rbench check

test-fast: lint  ## lint, then the tests that need no long training
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 -m "not gpu and not slow" -q

# Headless Chromium from Debian's packages, for the HTML leaderboard's browser test
# (tests/test_html_board.py skips without it); selenium, which drives it, is in the test extra.
browser:  ## install chromium and chromium-driver (apt; sudo unless root) for the browser test
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y --no-install-recommends chromium chromium-driver
	@chromium --version && chromedriver --version

lint:
	$(BIN)/ruff check bench methods tests
	$(BIN)/ruff format --check bench methods tests

format:
	$(BIN)/ruff check --fix bench methods tests
	$(BIN)/ruff format bench methods tests

# The full configuration (ResNet-18, 50k images, PGD-10) where CUDA is present, a small one on a
# CPU; the output says which. Pass sizes through BENCH_ARGS, e.g. BENCH_ARGS="--n-train 5000".
bench:  ## rbench's PGD-AT epoch and AutoAttack path against plain PyTorch (docs/performance.md)
	$(BIN)/python -m rbench.perf.speed $(BENCH_ARGS)

# One-line bugs in the evaluation, budget, losses, masks and method objectives, applied one at a
# time in a scratch copy (the real files are never written), each against the fast tests that
# guard that code; not part of CI (about an hour on a 2-core CPU). MUTANTS_ARGS="--only E01,T02".
.PHONY: mutants
mutants:  ## mutation score of the tests (tools/mutants.py, docs/mutation.md)
	$(BIN)/python tools/mutants.py $(MUTANTS_ARGS)

leaderboard:  ## regenerate leaderboard/LEADERBOARD.md, CSV, JSON and plots from leaderboard/entries
	$(BIN)/rbench leaderboard

# The runs behind the committed mnist5k leaderboard (v3; many hours on a 2-core CPU: every step
# skips what is done and resumes what was interrupted, so rerun it until it finishes). Then
# `make leaderboard`. Order: the tuning search (validation split), the references, the main grid
# ratio by ratio, the compute axis at ratio 16, lth-adv at its paper's compute, the standard
# protocol at 4 and 16.
LB_METHODS = cstar,hydra,lth-adv,magnitude,orth-lowrank,radmm,random,sparse-robust,tscnc
LB = --results-dir leaderboard/entries --tuning leaderboard/tuning
RB = $(BIN)/rbench
# Order: the main grid, the 1 AT-epoch leg, lth-adv at its paper's compute, the standard protocol,
# then the 20 AT-epoch leg (the costliest, so the board gains its required pieces first).
leaderboard-runs:  ## the runs behind leaderboard/entries and leaderboard/tuning (resumable)
	for m in $(subst $(comma), ,$(LB_METHODS)); do $(RB) tune -m $$m -r 16 --out leaderboard/tuning -q; done
	$(RB) tune -m dense-ft -r 1 --out leaderboard/tuning -q
	$(RB) sweep --methods dense,dense-ft --ratios 1 --seeds 0,1,2 $(LB)
	for r in 16 4 2 8 32; do $(RB) sweep --methods $(LB_METHODS) --ratios $$r --seeds 0,1,2 $(LB); done
	$(RB) sweep --methods dense-ft --ratios 1 --seeds 0,1,2 --epochs 1 $(LB)
	$(RB) sweep --methods $(LB_METHODS) --ratios 16 --seeds 0,1,2 --epochs 1 $(LB)
	$(RB) sweep --methods lth-adv --ratios 4,16 --seeds 0,1,2 --epochs $(LTH_PAPER_EPOCHS) $(LB)
	$(RB) sweep --methods dense,dense-ft --ratios 1 --seeds 0 --protocol standard $(LB)
	$(RB) sweep --methods $(LB_METHODS) --ratios 4,16 --seeds 0 --protocol standard $(LB)
	$(RB) sweep --methods dense-ft --ratios 1 --seeds 0,1,2 --epochs 20 $(LB)
	$(RB) sweep --methods $(LB_METHODS) --ratios 16 --seeds 0,1,2 --epochs 20 $(LB)
comma := ,
# lth-adv's paper trains every round in full: R + 1 trainings of the dense recipe's length
LTH_PAPER_EPOCHS = 100

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
