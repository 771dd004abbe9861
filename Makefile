# The two commands: `make serve` starts the gateway, `make test` runs the tests.
# Both install into a local virtual environment (.venv) first.
PYTHON ?= python3
VENV := .venv
# Two stamps: `make serve` needs only the gateway; the tests also need the test extra.
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: serve test install clean adversarial bench

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e .
	touch $(RUNTIME)

$(TESTING): $(RUNTIME)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(TESTING)

install: $(TESTING)

serve: $(RUNTIME)
	$(VENV)/bin/gateway --data-dir ./var serve --listen 127.0.0.1:2222

# In parallel, one pytest-xdist worker a core (each with its own server); PYTEST_ARGS adds
# options, e.g. PYTEST_ARGS='-n 0' for a serial run.
test: $(TESTING)
	$(VENV)/bin/pytest -q -n auto $(PYTEST_ARGS)

adversarial: $(TESTING)
	$(VENV)/bin/python -m adversarial

# The gateway side by side with OpenSSH + C git (bench/compare.py; --scale, --profile).
bench: $(TESTING)
	$(VENV)/bin/python bench/compare.py

clean:
	rm -rf $(VENV) *.egg-info
