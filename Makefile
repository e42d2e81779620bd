VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARIANE_PORT ?= 8000
ARIANE_DATABASE_URL ?= sqlite:///./ariane.db
export ARIANE_PORT ARIANE_DATABASE_URL

.PHONY: install run test lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ariane migrate
	$(VENV)/bin/ariane serve --host 127.0.0.1 --port $(ARIANE_PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) ariane.db ariane.db-wal ariane.db-shm
