# Two commands for everyone: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACS_ARGS ?=

.PHONY: serve test install install-test system-deps bench lint clean

$(BIN)/pacs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

install: $(BIN)/pacs

## Start the archive on embedded defaults: data in ./pacs-data, AE PACS on 11112, HTTP on 8080.
serve: install
	$(BIN)/pacs serve --data-dir ./pacs-data $(PACS_ARGS)

# DCMTK gives the tests real third-party DICOM clients (storescu and friends), and
# Orthanc with its DICOMweb plugin another archive as a client (tests/e2e/test_orthanc.py);
# Debian's Chromium is the real browser the viewer tests drive through Playwright.
# PostgreSQL a real server for the index tests (each run starts a private cluster
# of its own: tests/services.py); docker-compose checks docker/docker-compose.yml
# (no Docker engine is needed for that). S3 is moto's server, a Python package.
system-deps:
	@if ! command -v storescu >/dev/null 2>&1; then \
		echo "Installing Debian's dcmtk for storescu/findscu/movescu/getscu"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "Installing Debian's chromium for the viewer's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		echo "Installing Debian's postgresql for the PostgreSQL index tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi
	@if ! command -v Orthanc >/dev/null 2>&1 || ! dpkg -s orthanc-dicomweb >/dev/null 2>&1; then \
		echo "Installing Debian's orthanc and orthanc-dicomweb: another archive as a client of pacs"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			orthanc orthanc-dicomweb >/dev/null; \
	fi
	@if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then \
		echo "Installing Debian's docker-compose to check docker/docker-compose.yml"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends docker-compose >/dev/null; \
	fi

install-test: install system-deps
	$(BIN)/pip install --quiet -e '.[test]'

## Install what the tests need, then lint, type-check and run them.
test: install-test lint
	$(BIN)/python -m pytest -q --durations=8 $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check pacs storage tests benchmarks
	$(BIN)/mypy

## Measure ingest against Orthanc (needs Debian's orthanc; installs it if missing), then
## C-FIND on 100,000 studies and C-MOVE against C-STORE (the index is cached in benchmarks/.cache),
## then DICOMweb against Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb; installed if missing).
## Then rendering (JPEG/PNG) and transcoding, against the naive path and against Orthanc with
## its GDCM plugin (Debian's orthanc-gdcm; installed if missing), and the web viewer in
## Chromium (first image, whole series, bytes, scroll rate).
bench: install-test
	@command -v Orthanc >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc >/dev/null)
	@dpkg -s orthanc-dicomweb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc-dicomweb >/dev/null)
	@dpkg -s orthanc-gdcm >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc-gdcm >/dev/null)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/query.py
	$(BIN)/python benchmarks/dicomweb.py
	$(BIN)/python benchmarks/imaging.py
	$(BIN)/python benchmarks/viewer.py

clean:
	rm -rf $(VENV) .pytest_cache
