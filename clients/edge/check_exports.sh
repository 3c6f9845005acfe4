#!/bin/sh
# clients/edge/check_exports.sh LIB.so HEADER NM CC — fails unless the dynamic symbols LIB.so
# defines are exactly the functions HEADER declares: nothing internal leaks out (the version
# script, cairn_edge.map, keeps it local) and nothing declared is missing (a program built against
# the installed header would not link). NM and CC may be cross tools: CC only parses HEADER.
set -eu
so=$1 nm=$3 cc=$4
header=$(cd "$(dirname "$2")" && pwd)/$(basename "$2") # included from a temporary directory
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Defined dynamic symbols (absolute ones aside). Data symbols count too: none are expected.
"$nm" -D --defined-only "$so" | awk '$2 ~ /^[A-Za-z]$/ && $2 != "A" {print $3}' |
    sed 's/@.*//' | sort -u >"$tmp/exported"
# GCC's -aux-info writes a prototype for every function declared; keep the ones from HEADER.
printf '#include "%s"\n' "$header" >"$tmp/h.c"
"$cc" -fsyntax-only -aux-info "$tmp/aux" "$tmp/h.c"
grep -F "$(basename "$header"):" "$tmp/aux" |
    sed -E 's/^.*\*\/ *//; s/\(.*//; s/.*[ *]([A-Za-z_][A-Za-z0-9_]*) *$/\1/' |
    sort -u >"$tmp/declared"
if ! diff -u "$tmp/declared" "$tmp/exported" >"$tmp/diff"; then
    echo "check_exports: $so exports (+) or lacks (-) these, against $header:"
    grep -E '^[-+][a-z_]' "$tmp/diff" || true
    exit 1
fi
n=$(wc -l <"$tmp/declared")
echo "check_exports: $so exports exactly the $n functions of $(basename "$header")"
