# cairn — a thin front over scripts/setup, CMake and ctest.
#   make run    set up, build, serve cairnd on :8080 with the default data
#   make test   set up, build under ASan/UBSan, run every test
#   make bench [FULL=1]
#               set up the peers (scripts/setup-bench: llama.cpp, onnxruntime, faiss-cpu in .venv,
#               once), build, run every benchmark, write docs/bench/latest.json and the table atop
#               docs/BENCHMARKS.md; quick by default, FULL=1 for the whole corpus and every sweep
#   make bench-gpu                build the GPU benchmarks and print the one device call to make
#   make bench-merge GPU="F..."   merge the JSON lines it brought back into the same report
#   make install-edge PREFIX=/opt/cairn-edge [EDGE_TOOLCHAIN=cmake/aarch64-linux-gnu.cmake]
#               build the edge SDK on its own (clients/edge) and install libcairn_edge.a/.so,
#               <cairn_edge.h>, cairn-edge.pc and the examples (docs/EDGE.md)
.PHONY: all setup build run test bench bench-gpu bench-merge fuzz clean install-edge

JOBS       ?= $(shell nproc)
CUDA       ?= AUTO
CAIRN_DATA ?= $(CURDIR)/data
FUZZ_SECONDS ?= 60
FULL       ?= 0
GPU        ?=
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

# The peers are set up before the build so a failed llama.cpp build stops at once; only this
# target pays for them (make run and make test do not).
bench: setup
	scripts/setup-bench
	$(MAKE) build
	CAIRN_BENCH_FULL=$(FULL) scripts/bench

# Build here (nvcc needed), then one call on a GPU machine with .gpu-carry carried; its JSON lines
# come back in $$OUT/bench.jsonl and `make bench-merge` adds them, with the card's name.
bench-gpu:
	scripts/gpu-check pack
	@echo
	@echo "Now one call on a machine with an NVIDIA GPU, on a copy of this tree with .gpu-carry"
	@echo "(git-ignored: carry it; with the device tool: run, carry [\".gpu-carry\"]):"
	@echo "    scripts/gpu-check run bench peer   # JSON lines to \$$OUT/bench.jsonl (OUT=dir)"
	@echo "and, here, with the file it brought back:"
	@echo "    make bench-merge GPU=path/to/bench.jsonl"

bench-merge:
	@test -n "$(GPU)" || { echo 'usage: make bench-merge GPU="FILE.jsonl..."' >&2; exit 2; }
	scripts/bench-report $(foreach f,$(GPU),--gpu $(f))
	scripts/plot-bench --gpu-only

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
