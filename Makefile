# rbench: the two commands a newcomer needs are `make setup` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint format bench leaderboard leaderboard-runs clean

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

leaderboard:  ## regenerate leaderboard/LEADERBOARD.md, CSV, JSON and plots from leaderboard/entries
	$(BIN)/rbench leaderboard

# The runs behind the committed mnist5k leaderboard (hours on a 2-core CPU; a rerun skips what
# is done and resumes what was interrupted). Then `make leaderboard`.
LB_METHODS = cstar,hydra,lth-adv,magnitude,orth-lowrank,radmm,sparse-robust,tscnc
LB = --results-dir leaderboard/entries
leaderboard-runs:  ## the sweeps behind leaderboard/entries (quick: every ratio x 3 seeds; standard: 4, 16)
	$(BIN)/rbench sweep --methods dense --ratios 1 --seeds 0,1,2 $(LB)
	$(BIN)/rbench sweep --methods $(LB_METHODS) --ratios 2,4,8,16,32 --seeds 0,1,2 $(LB)
	$(BIN)/rbench sweep --methods dense --ratios 1 --seeds 0 --protocol standard $(LB)
	$(BIN)/rbench sweep --methods $(LB_METHODS) --ratios 4,16 --seeds 0 --protocol standard $(LB)
	for r in 4 16; do for p in quick standard; do \
	  $(BIN)/rbench run -m radmm --opt structure=filter -r $$r --protocol $$p $(LB) -q; done; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
