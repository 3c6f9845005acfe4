# cmake/aarch64-linux-gnu.cmake — cross-compiling for 64-bit Arm Linux (aarch64) on a Debian or
# Ubuntu host, with the distribution's cross toolchain and multiarch libraries:
#
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install crossbuild-essential-arm64 qemu-user \
#       libssl-dev:arm64 libprotobuf-c-dev:arm64 libcurl4-openssl-dev:arm64 [libcmocka-dev:arm64]
#   cmake -S clients/edge -B build-edge-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#
# (scripts/setup installs all of these.) Multiarch keeps the arm64 libraries in
# /usr/lib/aarch64-linux-gnu beside the host's, so there is no sysroot: the cross GCC already
# searches the aarch64 directories, pkg-config is pointed at the arm64 .pc files only, and CMake
# is kept from picking up the host's x86-64 libraries. Programs the build runs (protoc-c) are the
# host's. Tests and the example run under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR: ctest
# prefixes every test command with it); qemu finds the arm64 dynamic loader at the path the binary
# names, /lib/ld-linux-aarch64.so.1, which multiarch's libc6:arm64 installs.
#
# A vendor toolchain with a real sysroot works the same way: set CAIRN_CROSS_PREFIX to its
# compiler prefix and CMAKE_SYSROOT to its sysroot.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CAIRN_CROSS_PREFIX aarch64-linux-gnu- CACHE STRING "cross compiler prefix")
set(CMAKE_C_COMPILER ${CAIRN_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${CAIRN_CROSS_PREFIX}g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Libraries and headers: only the target's. Programs: only the host's.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/include/x86_64-linux-gnu)

# pkg-config: the arm64 .pc files and the architecture-independent ones, never the host's.
if(NOT CMAKE_SYSROOT)
    set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
    set(ENV{PKG_CONFIG_PATH} "")
endif()

find_program(CAIRN_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(CAIRN_QEMU_AARCH64)
    set(CMAKE_CROSSCOMPILING_EMULATOR ${CAIRN_QEMU_AARCH64})
endif()
