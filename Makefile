# The two commands: `make serve` starts the gateway, `make test` runs the tests.
# Both install into a local virtual environment (.venv) first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: serve test install clean adversarial bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/gateway --data-dir ./var serve --listen 127.0.0.1:2222

test: $(STAMP)
	$(VENV)/bin/pytest -q

adversarial: $(STAMP)
	$(VENV)/bin/python -m adversarial

# The gateway side by side with OpenSSH + C git (bench/compare.py; --scale, --profile).
bench: $(STAMP)
	$(VENV)/bin/python bench/compare.py

clean:
	rm -rf $(VENV) *.egg-info
