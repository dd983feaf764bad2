# d2cli: everything a fresh machine needs is here (CI runs `make test` in a fresh clone).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo lint bench clean gpu-wheels

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks scripts

demo: venv
	bash scripts/demo.sh

bench: venv
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/match.py

gpu-wheels: venv
	$(PY) -m pip download --quiet --only-binary=:all: -d wheels click rich h5py pytest pillow \
		pygments markdown-it-py mdurl iniconfig pluggy packaging

clean:
	rm -rf $(VENV) build *.egg-info demo-out wheels
