# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) .venv, installs torch 2.13.0 first (the local CPU wheel on machines
# without CUDA; a range it satisfies then keeps pip from pulling a CUDA build), then samdata
# with its test extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samdata-installed

.PHONY: demo test test-all lint bench clean

# The last install is the official SAM 2 (facebookresearch/sam2's code, PyPI sam2 1.1.0) for the
# SAM 2 parity tests, without its requirements (a CUDA torchvision, hydra: the tests stand in
# for what they use), hence not in the test extra; no CUDA extension, no build isolation.
# Then the official SAM 3 (PyPI sam3 0.1.4) for the SAM 3 parity tests, also --no-deps (timm,
# torchvision, triton, huggingface_hub...: tests/golden/make_sam3_official.py stands in).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --disable-pip-version-check --no-deps \
		--no-build-isolation 'sam2==1.1.0'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps 'sam3==0.1.4'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/samdata demo

# The default suite leaves out the checks marked slow (under 15 minutes on 2 cores)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Everything, the slow checks too (about 40 minutes on 2 cores)
test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m ""

# Every performance figure, side by side in one run, on this machine's device (CPU: ~15 min)
bench: $(STAMP)
	$(PY) bench/all.py --markdown --out bench-results.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
