# Staffel: `make demo` and `make test` set up .venv themselves (fast when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/staffel/v1/*.proto)
LINTED := server client keys
PROTOC = PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto \
	--python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) $(PROTOS)

.PHONY: venv tools boot-tools proto proto-check lint test pytest demo bench bench-full clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ needed (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## The Debian bootloader tools the client's grub and uboot backends (and tests) drive.
boot-tools:
	@sh scripts/install-boot-tools.sh

## Regenerate the Python code of the gRPC contract (proto/staffel/v1/*_pb2*.py[i]).
proto: $(STAMP)
	$(call PROTOC,proto)

## Fails when the checked-in generated code differs from what `make proto` makes.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && $(call PROTOC,$$tmp) && \
	  diff -r -x '__init__.py' -x '__pycache__' $$tmp/staffel/v1 proto/staffel/v1 --exclude='*.proto' \
	  && echo "generated code is fresh" ; status=$$?; rm -rf $$tmp; \
	  [ $$status -eq 0 ] || { echo "generated code is stale: run 'make proto' and commit"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(LINTED)

## kubectl renders deploy/'s Kustomize overlays in the tests; Debian ships it as kubernetes-client.
tools:
	@command -v kubectl >/dev/null || { \
	  echo "kubectl missing: installing Debian's kubernetes-client"; \
	  apt-get update -q && apt-get install -y -q kubernetes-client; } || \
	  { echo "cannot install kubectl: run 'apt-get install kubernetes-client' as root"; exit 1; }

pytest: $(STAMP) tools boot-tools
	@sh tests/keys/ensure-softhsm2.sh
	$(BIN)/python -m pytest

test: lint proto-check pytest

demo: $(STAMP)
	$(BIN)/python -m server.demo

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --small || exit 1; done

bench-full: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
