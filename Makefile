VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make run` serves on 127.0.0.1:8000 with SQLite at ./ariane.db unless these are set.
ARIANE_PORT ?= 8000
ARIANE_DATABASE_URL ?= sqlite:///./ariane.db

.PHONY: install run test lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	ARIANE_DATABASE_URL='$(ARIANE_DATABASE_URL)' $(VENV)/bin/ariane migrate
	ARIANE_DATABASE_URL='$(ARIANE_DATABASE_URL)' $(VENV)/bin/ariane serve --host 127.0.0.1 --port $(ARIANE_PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -n auto --dist loadfile

bench: $(STAMP)
	$(PY) -m bench.ingest

clean:
	rm -rf $(VENV) ariane.db ariane.db-wal ariane.db-shm
