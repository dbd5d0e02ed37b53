# rbn: the two commands of the README are `make demo` and `make test`; both install what they
# need from Debian first (scripts/install-deps.sh), then build.
BUILD ?= build
JOBS ?= $(shell nproc)
PY ?= /usr/bin/python3
CMAKE_FLAGS ?=

.PHONY: all deps configure build test test-cpp test-python test-asan fuzz demo bench clean

all: build

deps:
	bash scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(PY) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The unit suite: C++ (ctest) and Python (pytest with Debian's interpreter).
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600
	PYTHONPATH=$(CURDIR)/$(BUILD)/python:$(CURDIR)/python $(PY) -m pytest -q tests/python

# The C++ suite once more under AddressSanitizer and UBSan.
test-asan: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRBN_SANITIZE=ON \
	  -DRBN_PYTHON=OFF -DRBN_MPI=OFF
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS) --timeout 1200

# Each parser's libFuzzer target for FUZZ_SECONDS, from the committed seed corpus.
FUZZ_SECONDS ?= 60
fuzz: deps
	CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRBN_FUZZ=ON \
	  -DRBN_TESTS=OFF -DRBN_PYTHON=OFF -DRBN_NATIVE=OFF -DRBN_MPI=OFF
	cmake --build build-fuzz -j $(JOBS)
	bash scripts/run-fuzzers.sh build-fuzz $(FUZZ_SECONDS)

# Trains a small BN-LSTM on Penn Treebank characters (shipped in data/) for a few minutes,
# evaluates it with population statistics, and plots its curve.
demo: build
	bash scripts/demo.sh $(BUILD)

bench: build
	$(BUILD)/rbn bench --json $(BUILD)/bench.json

clean:
	rm -rf $(BUILD) build-asan build-fuzz
