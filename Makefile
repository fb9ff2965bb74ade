# One-command entry points for a fresh machine. `make demo` and `make test` create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := packages/mm-core packages/mm-convert packages/mm-qwen packages/mm-glm packages/mm-internvl packages/mm-visualglm
STAMP := $(VENV)/.mm-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): requirements/dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -r requirements/dev.txt $(addprefix -e ,$(PACKAGES))
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mm-run demo

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check packages tests bench examples

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV)
