# One-command entry points for a fresh machine. `make demo` and `make test` create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := packages/mm-core packages/mm-convert packages/mm-qwen packages/mm-glm packages/mm-internvl packages/mm-visualglm
STAMP := $(VENV)/.mm-installed

.PHONY: setup demo test test-compat lint bench clean

setup: $(STAMP)

$(STAMP): requirements/dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -r requirements/dev.txt $(addprefix -e ,$(PACKAGES))
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mm-run demo

test: setup
	$(PY) -m pytest tests -n 2 --durations=15

# The suite against another torch in a second environment (.venv-torch<version>), e.g. the declared
# minimum: make test-compat TORCH=2.11.0 [TORCH_INDEX=<CPU wheel index>] [PYTEST_ARGS="-n 2"].
# Not part of .ci/run (an older torch is another large download); run it when pipelining, FSDP2,
# DTensor or DCP code changes. See requirements/compat_env.py for how torch is installed.
TORCH ?= 2.11.0
PYTEST_ARGS ?= -n 2
COMPAT_VENV := $(VENV)-torch$(TORCH)

test-compat:
	$(PYTHON) requirements/compat_env.py --torch $(TORCH) --venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check packages tests bench examples

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV)
