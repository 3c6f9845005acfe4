#!/bin/sh
# clients/edge/linkcheck.sh BINARY — fails when a program linked against libcairn_edge pulls in
# FAISS, CUDA, libmicrohttpd, hiredis or a BLAS, as a shared library (ldd) or statically (nm).
set -u
bin=$1
[ -x "$bin" ] || { echo "linkcheck: $bin is not an executable"; exit 2; }
bad=0
libs=$(ldd "$bin") || { echo "linkcheck: ldd failed"; exit 2; }
if echo "$libs" | grep -Ei 'faiss|cudart|libcuda|microhttpd|hiredis|openblas|libblas'; then
    echo "linkcheck: forbidden shared library above"; bad=1
fi
syms=$(nm -C "$bin" 2>/dev/null) || { echo "linkcheck: nm failed"; exit 2; }
found=$(echo "$syms" | grep -E ' [TtDdBbRrWw] ' |
        grep -Ei 'faiss::|faiss_|cudaMalloc|cudaLaunch|MHD_start_daemon|redisConnect|cblas_')
if [ -n "$found" ]; then
    echo "$found" | head -20
    echo "linkcheck: forbidden symbols above"; bad=1
fi
[ $bad -eq 0 ] && echo "linkcheck: $bin links none of faiss, cuda, microhttpd, hiredis, blas"
exit $bad
