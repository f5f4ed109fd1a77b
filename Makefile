# lipnotes: `make docs` (set up, export, render) and `make test` (everything CI checks: lint, sync, tests, notebooks). See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# A CPU build of torch for machines that have none: a local wheel if pip's find-links has one (this project's machines
# do), else PyTorch's CPU index. A bare `pip install torch` on Linux resolves to a multi-GB CUDA build.
TORCH_LOCAL ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: install export docs readme lint test check-sync bench clean vendor

# `make docs` installs only what renders the book (the `docs` extra); `make install`, and so `make test`, everything
# (the `dev` extra, which includes `docs`).
install: $(VENV)/.installed

$(VENV)/.installed: $(VENV)/.torch
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed-docs

$(VENV)/.installed-docs: $(VENV)/.torch
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

$(VENV)/.torch: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  tmp=$$(mktemp -d); \
	  if $(PY) -m pip download -q --no-index --no-deps -d $$tmp "$(TORCH_LOCAL)" 2>/dev/null; then \
	    echo "installing torch from the local wheel $$(ls $$tmp)"; $(PY) -m pip install -q $$tmp/torch-*.whl; \
	  else \
	    echo "installing a CPU build of torch from $(TORCH_CPU_INDEX)"; \
	    $(PY) -m pip install -q "torch>=2.4" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	  fi; rm -rf $$tmp; \
	fi
	touch $@

export: install
	$(BIN)/nbdev-export

docs: $(VENV)/.installed-docs
	$(BIN)/nbdev-export
	@if command -v quarto >/dev/null 2>&1; then \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev-docs; \
	else \
	  echo "Quarto is not on PATH: rendering with tools/render_docs.py"; $(PY) tools/render_docs.py; \
	fi
	$(PY) tools/render_docs.py --readme --no-proc

readme: $(VENV)/.installed-docs
	$(BIN)/nbdev-export
	$(PY) tools/render_docs.py --readme

# The notebooks are the source: fail if cleaning them or exporting the library would change any file.
check-sync: install
	@before=$$(git status --porcelain; git diff | sha1sum); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev-clean && PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev-export; \
	after=$$(git status --porcelain; git diff | sha1sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-clean/nbdev-export changed files: notebooks unclean or library out of sync:"; git status --porcelain; exit 1; \
	fi; echo "notebooks clean, library in sync"

# ruff over the library, the tests, the benchmarks, the tools and the notebooks (rules and line length: pyproject.toml).
lint: install
	$(BIN)/ruff check lipnotes tests benchmarks tools nbs conftest.py

test: lint check-sync
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m pytest tests nbs $(NBVAL) -p no:cacheprovider

# Every benchmarks/bench_*.py, in file-name order; each reports ratios against a baseline timed in the same process.
bench: install
	@set -e; for f in benchmarks/bench_*.py; do echo "=== $$f"; $(PY) $$f; done

# `make lab`: the book (nbs/) in JupyterLab, its notebooks run by this venv's python. The venv's `python3` kernelspec is
# (re)written with the venv's absolute python, and the venv's share/jupyter goes first on JUPYTER_PATH, ahead of the user's
# (~/.local/share/jupyter), so a user-level `python3` kernelspec cannot replace it. Extra arguments: LAB_ARGS, e.g.
# make lab LAB_ARGS="--no-browser --port=8899"; LAB_ROOT serves another folder (tests/test_lab.py: a copy of nbs/).
LAB_ROOT ?= nbs
LAB_ARGS ?=
.PHONY: lab
lab: install
	$(PY) -m ipykernel install --sys-prefix --name python3
	JUPYTER_PATH="$(abspath $(VENV))/share/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH}" \
	  exec $(BIN)/jupyter lab --ServerApp.root_dir="$(LAB_ROOT)" $(LAB_ARGS)

clean:
	rm -rf _proc docs .pytest_cache

# Re-fetch the vendored search library from the npm registry and check it: the tarball's sha512 against the registry's
# integrity and the one recorded in tools/vendor/minisearch/README.md, the file's sha256 against the recorded one; only
# then copy it. Another version means updating the README's records on purpose. `make docs` never needs the network.
MINISEARCH := minisearch@7.2.0
SHA512 := import base64, hashlib, sys; print('sha512-' + base64.b64encode(hashlib.sha512(open(sys.argv[1], 'rb').read()).digest()).decode())
vendor:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; readme=tools/vendor/minisearch/README.md; \
	(cd "$$tmp" && npm pack -q $(MINISEARCH) >/dev/null) || { echo "vendor: npm pack $(MINISEARCH) failed"; exit 1; }; \
	tgz=$$(ls "$$tmp"/minisearch-*.tgz); got=$$($(PYTHON) -c "$(SHA512)" "$$tgz"); \
	want=$$(npm view $(MINISEARCH) dist.integrity); \
	[ "$$got" = "$$want" ] || { echo "vendor: the tarball's $$got is not the registry's integrity $$want"; exit 1; }; \
	grep -qF -- "$$got" $$readme || { echo "vendor: $$got is not the integrity recorded in $$readme"; exit 1; }; \
	tar xzf "$$tgz" -C "$$tmp"; sha=$$(sha256sum "$$tmp/package/dist/umd/index.js" | cut -d' ' -f1); \
	grep -qF -- "$$sha" $$readme || { echo "vendor: dist/umd/index.js has sha256 $$sha, not the one in $$readme"; exit 1; }; \
	cp "$$tmp/package/dist/umd/index.js" tools/vendor/minisearch/minisearch.js; \
	cp "$$tmp/package/LICENSE.txt" tools/vendor/minisearch/LICENSE.txt; \
	echo "tools/vendor/minisearch: $(MINISEARCH) fetched; sha512 (registry and README) and sha256 (README) match"
