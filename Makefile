# How ViTs Work: one-command set-up, tests, book, zoo and benchmarks.
#   make test     set up (.venv, packages, data) and run every test
#   make test-threads  the chapters' stored outputs checked with 1 and with 4 threads
#   make book     set up and build the HTML book from the stored outputs
#   make pdf      build the book and print it into one PDF, _build/pdf/how-vits-work.pdf
#   make colab-check  run every chapter alone as on Colab, against the latest torch/torchvision/timm
#   make execute  re-execute the chapters in place (after lib or checkpoint changes) and rewrite
#                 the introduction's table of claims (summary/claims.md) from them
#   make zoo      train what the zoo lacks with the zoo's recipe, restartably, in priority order, into
#                 the staging area data/checkpoints/next (JOBS trainings of THREADS threads each at once;
#                 ZOO_ARGS="--set core" and so on); python -m lib.zoo progress says where it stands
#   make ablations  only chapter 6's AlterNet placement ablations
#   make bench    run the benchmarks
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist
# Two 1-thread trainings train 8-19% more images per second on two cores than one 2-thread training.
JOBS ?= 2
THREADS ?= 1
ZOO_ARGS ?=

.PHONY: setup data test test-threads book html pdf browser-check colab-check execute zoo ablations bench clean

setup: $(STAMP) data

# The pins (numpy 2.4, torch 2.15, ...) have wheels for Python 3.11 and newer only: say so up front
# rather than fail deep inside pip.
$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null \
	  || { echo "error: no $(PYTHON) found; install Python 3.11 or newer, or name one with make PYTHON=..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 11) else "error: this book needs Python 3.11 or newer (the pinned packages, e.g. numpy==2.4.6, have no wheels for Python %d.%d); install one and run make PYTHON=python3.11 ..." % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Fashion-MNIST: Debian's package where apt-get is available, then lib.core.data copies it into data/.
data: $(STAMP)
	@if [ ! -d $(DEBIAN_FMNIST) ] && [ ! -f data/FashionMNIST/raw/t10k-labels-idx1-ubyte ] && command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "warning: could not install Debian's dataset-fashion-mnist; lib.core.data will try a download"; \
	fi
	$(PY) -c "from lib.core import data; data.ensure_fashion_mnist()"

# The stored outputs are compared digit for digit, and the float kernels PyTorch, MKL and oneDNN
# pick depend on the CPU's instruction set: the same chapter gives other last digits (and other
# Lanczos iteration counts) with AVX-512 than with AVX2. Every run that stores or checks outputs
# therefore uses the AVX2 kernels, which every x86-64 machine of this kind has; the zoo's training
# does not (it is not compared digit for digit, and AVX-512 trains faster).
test test-threads execute: export ATEN_CPU_CAPABILITY := avx2
test test-threads execute: export ONEDNN_MAX_CPU_ISA := AVX2
test test-threads execute: export MKL_ENABLE_INSTRUCTIONS := AVX2

# The library tests, the chapters re-executed and compared with their stored outputs (nbval),
# one chapter run alone as on Colab (make colab-check runs them all), then the book built and
# every page checked in a headless browser with no network.
# The library tests run TEST_WORKERS at a time (pytest-xdist), each process on one thread: most
# tests are too small to keep two threads busy, so two one-thread processes get through them
# faster; test files are shared out whole (loadfile) and TEST_WORKERS=0 runs them in one process.
# The chapters run one at a time on all the threads: their large tensors keep both cores busy, so
# two one-thread kernels side by side are no faster than one two-thread kernel (measured).
# The chapter run alone as on Colab is the quickest one (chapter 5, about two minutes on 2 cores).
COLAB_TEST_CHAPTER := chapters/05_multistage.ipynb
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests
	$(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 chapters
	$(PY) tools/colab_check.py $(COLAB_TEST_CHAPTER)
	$(MAKE) --no-print-directory browser-check

# The stored outputs must reproduce on a reader's machine too, whatever its number of cores: the
# chapters re-executed under nbval with 1 and with 4 threads (make test covers this machine's 2).
test-threads: setup
	for n in 1 4; do OMP_NUM_THREADS=$$n MKL_NUM_THREADS=$$n $(PY) -m pytest --nbval \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 chapters || exit 1; done

# The HTML is built from the stored outputs: it needs the packages, not the data.
book: $(STAMP) html

# Build the HTML from the stored outputs (no execution), warnings as errors; MathJax served locally.
html:
	bash tools/fetch_mathjax.sh
	$(VENV)/bin/jupyter-book build --warningiserror --keep-going .

# The whole book in one PDF: the single-page build (its own Sphinx environment under _build/print)
# printed by the headless Chromium of the browser check, with no network.
pdf: $(STAMP) html
	bash tools/install_browser.sh
	$(VENV)/bin/jupyter-book build --builder singlehtml --path-output _build/print \
	  --warningiserror --keep-going .
	$(PY) tools/print_book.py _build/print/_build/singlehtml -o _build/pdf/how-vits-work.pdf

browser-check: html pdf
	bash tools/install_browser.sh
	$(PY) tools/check_book.py _build/html --screenshot chapters/01_model_zoo.html
	$(PY) tools/check_pdf.py _build/pdf/how-vits-work.pdf --html _build/print/_build/singlehtml

# Each chapter copied out of the repository and run alone the way Colab runs it: a fresh venv with
# the latest torch, torchvision and timm (not the pins), a stand-in google.colab module, and the
# setup cell cloning this checkout's committed state (HOWVITS_REPO_URL). CHAPTERS=... for some.
CHAPTERS ?= chapters/*.ipynb
colab-check: setup
	$(PY) tools/colab_check.py $(CHAPTERS)

# Re-execute every chapter in place on this machine (CPU), as the stored outputs must be.
execute: setup
	@ls chapters/*.ipynb >/dev/null 2>&1 || { echo "error: no chapters/*.ipynb to execute"; exit 1; }
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 chapters/*.ipynb
	$(PY) tools/claims_summary.py

zoo: setup
	$(PY) -m lib.zoo train --jobs $(JOBS) --threads $(THREADS) $(ZOO_ARGS)

ablations: setup
	$(PY) -m lib.zoo train --set ablation --jobs $(JOBS) --threads $(THREADS) $(ZOO_ARGS)

PEERS := .bench-peers
PEERS_STAMP := $(PEERS)/.installed

# The tools our analyses are compared with, installed beside (never into) the project's venv.
$(PEERS_STAMP): benchmarks/requirements-peers.txt $(STAMP)
	rm -rf $(PEERS)
	$(PY) -m pip install --quiet --no-deps --target $(PEERS) -r benchmarks/requirements-peers.txt
	touch $@

bench: setup $(PEERS_STAMP)
	PYTHONPATH=$(PEERS) $(PY) benchmarks/hessian.py
	PYTHONPATH=$(PEERS) $(PY) benchmarks/landscape.py
	PYTHONPATH=$(PEERS) $(PY) benchmarks/cka.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/chapters.py

clean:
	rm -rf _build .pytest_cache
