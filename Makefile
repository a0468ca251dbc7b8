# Two commands set everything up on a fresh machine:
#   make demo   -> creates .venv if absent, then runs the main job on a small default
#   make test   -> creates .venv if absent, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FACE_REC_DATA ?= $(abspath ../shared/data)
export FACE_REC_DATA

.PHONY: venv data demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

data: venv
	test -d "$(FACE_REC_DATA)/lfw/images" || $(PY) -m face_rec.data.fetch lfw --root "$(FACE_REC_DATA)"

demo: data
	$(PY) train.py

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
