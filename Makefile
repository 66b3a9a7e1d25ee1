# Two entry points do all the set-up on a fresh clone:
#   make demo   venv + packages + engine (fetched with Maven) + sample data + the main job
#   make test   venv + packages + lint + the whole test suite against real nodes
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DOCS ?= 200000

.PHONY: install demo test lint unit down clean postgres

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "indexshift needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/indexshift sandbox up
	$(BIN)/indexshift sandbox seed --docs $(DEMO_DOCS) --replace
	$(BIN)/indexshift plan --dir migrations
	$(BIN)/indexshift migrate --dir migrations --yes
	$(BIN)/indexshift info file-index
	@echo "The sandbox keeps running: 'make down' stops it."

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

# The gateway's PostgreSQL log is tested against a real server, which the tests start
# themselves from Debian's package; install it where it is missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		{ echo "PostgreSQL's server (Debian package postgresql) is missing and could not be installed"; exit 1; }

test: lint postgres
	$(BIN)/pytest

down: install
	$(BIN)/indexshift sandbox down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
