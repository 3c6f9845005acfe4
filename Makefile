# cairn — a thin front over scripts/setup, CMake and ctest.
#   make run    set up, build, serve cairnd on :8080 with the default data
#   make test   set up, build under ASan/UBSan, run every test
#   make install-edge PREFIX=/opt/cairn-edge [EDGE_TOOLCHAIN=cmake/aarch64-linux-gnu.cmake]
#               build the edge SDK on its own (clients/edge) and install libcairn_edge.a/.so,
#               <cairn_edge.h>, cairn-edge.pc and the examples (docs/EDGE.md)
.PHONY: all setup build run test bench fuzz clean install-edge

JOBS       ?= $(shell nproc)
CUDA       ?= AUTO
CAIRN_DATA ?= $(CURDIR)/data
FUZZ_SECONDS ?= 60
PREFIX     ?= /usr/local
EDGE_TOOLCHAIN ?=
EDGE_BUILD ?= build-edge$(if $(EDGE_TOOLCHAIN),-$(basename $(notdir $(EDGE_TOOLCHAIN))))
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

# No setup: a device maker's machine needs only a C compiler, protoc-c and the -dev packages of
# OpenSSL, protobuf-c and (optionally) libcurl, for the target (docs/EDGE.md).
install-edge:
	cmake -S clients/edge -B $(EDGE_BUILD) -DCMAKE_BUILD_TYPE=Release \
	    -DCMAKE_INSTALL_PREFIX=$(PREFIX) \
	    $(if $(EDGE_TOOLCHAIN),-DCMAKE_TOOLCHAIN_FILE=$(abspath $(EDGE_TOOLCHAIN)))
	cmake --build $(EDGE_BUILD) -j $(JOBS)
	cmake --install $(EDGE_BUILD)

clean:
	rm -rf build build-test build-fuzz build-edge build-edge-*
