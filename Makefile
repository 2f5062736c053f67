# How ViTs Work: one-command set-up, tests, book, zoo and benchmarks.
#   make test     set up (.venv, packages, data) and run every test
#   make book     set up and build the HTML book from the stored outputs
#   make execute  re-execute the chapters in place (after lib or checkpoint changes)
#   make zoo      retrain the whole model zoo with the full recipe (GPU recommended)
#   make bench    run the benchmarks
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist
JOBS ?= 1

.PHONY: setup data test book execute zoo bench clean

setup: $(STAMP) data

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Fashion-MNIST: Debian's package where apt-get is available, then lib.data copies it into data/.
data: $(STAMP)
	@if [ ! -d $(DEBIAN_FMNIST) ] && [ ! -f data/FashionMNIST/raw/t10k-labels-idx1-ubyte ] && command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "warning: could not install Debian's dataset-fashion-mnist; lib.data will try a download"; \
	fi
	$(PY) -c "from lib import data; data.ensure_fashion_mnist()"

test: setup
	$(PY) -m pytest tests

book: setup
	@test -f _config.yml || { echo "error: no _config.yml: the book scaffold is not here yet"; exit 1; }
	$(PY) -m jupyter_book build --warningiserror --keep-going .

execute: setup
	@ls chapters/*.ipynb >/dev/null 2>&1 || { echo "error: no chapters/*.ipynb to execute"; exit 1; }
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace chapters/*.ipynb

zoo: setup
	$(PY) -m lib.zoo train --jobs $(JOBS)

bench: setup
	@ls benchmarks/*.py >/dev/null 2>&1 || { echo "error: no benchmarks/*.py yet"; exit 1; }
	@for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf _build .pytest_cache
