#!/usr/bin/env bash
# cmake --install of a build into a temporary prefix, then a project outside the source tree
# (tests/install/consumer) configured with find_package(rbn CONFIG), built and run; the
# installed `rbn` tool runs too. Usage: check_cmake_install.sh BUILD_DIR CONSUMER_SOURCE_DIR
set -euo pipefail
build=$1 consumer=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/rbn-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/rbn/rbn.hpp"
test -f "$work/prefix/lib/cmake/rbn/rbnConfig.cmake" || test -n "$(ls "$work"/prefix/lib*/cmake/rbn/rbnConfig.cmake)"
"$work/prefix/bin/rbn" --help > /dev/null
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S "$consumer" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log"
"$work/build/consumer"
