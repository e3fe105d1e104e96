# Each target sets itself up: a virtualenv in .venv with the CPU build of torch and the pinned
# versions of constraints.txt (the ones this project is tested with).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
TRIALS ?= 20

.PHONY: setup demo test lint clean fashion-mnist postgresql

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, pinned to the CPU build: an open torch requirement can pull a CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[search,dev,openvino]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/paretoedge run experiments/digits.yaml --trials $(TRIALS)

# The type checker first (packages and strictness: [tool.mypy] in pyproject.toml), then the tests.
# The shared-storage tests start a real PostgreSQL server: Debian's package, installed here when
# its binaries are missing (needs root, or run the apt-get line as root).
test: $(STAMP) postgresql
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

postgresql:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

# The reference benchmark's data: Debian's package (needs root, or run the apt-get line as root).
fashion-mnist:
	test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
