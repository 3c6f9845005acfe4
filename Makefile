# cairn — a thin front over scripts/setup, CMake and ctest.
#   make run    set up, build, serve cairnd on :8080 with the default data
#   make test   set up, build under ASan/UBSan, run every test
.PHONY: all setup build run test bench fuzz clean

JOBS       ?= $(shell nproc)
CUDA       ?= AUTO
CAIRN_DATA ?= $(CURDIR)/data
FUZZ_SECONDS ?= 60
export CAIRN_DATA

all: build

setup:
	@scripts/setup

build: setup
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCAIRN_CUDA=$(CUDA) -DCAIRN_TESTS=OFF
	cmake --build build -j $(JOBS)

run: build
	scripts/run

test: setup
	cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCAIRN_CUDA=$(CUDA) -DCAIRN_SANITIZE=ON
	cmake --build build-test -j $(JOBS)
	cd build-test && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:protect_shadow_gap=0 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    ctest --output-on-failure -j $(JOBS)

bench: build
	scripts/bench

fuzz: setup
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCAIRN_CUDA=OFF -DCAIRN_FUZZ=ON -DCAIRN_SANITIZE=ON
	cmake --build build-fuzz -j $(JOBS)
	scripts/fuzz build-fuzz $(FUZZ_SECONDS)

clean:
	rm -rf build build-test build-fuzz
