# Terrace: `make demo` brings up the lab fabric with the controller and dashboard;
# `make test` runs every test. Both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES := frr iptables ipset chromium iproute2 iputils-ping procps containernetworking-plugins
STAMP := .terrace-installed

.PHONY: install deps-system deps-python lint test test-unit test-integration test-lab test-browser demo demo-down clean

install: deps-system deps-python

deps-system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

deps-python: $(STAMP)

$(STAMP): pyproject.toml
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

lint: deps-python
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

test: install lint
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test-unit: deps-python
	$(PYTHON) -m pytest -q tests/unit

test-integration: deps-python
	$(PYTHON) -m pytest -q tests/integration

test-lab: install
	$(PYTHON) -m pytest -q tests/lab

test-browser: install
	$(PYTHON) -m pytest -q tests/browser

demo: install
	$(PYTHON) -m terrace.demo

demo-down:
	$(PYTHON) -m terrace.demo --down

clean:
	rm -rf .terrace $(STAMP) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
