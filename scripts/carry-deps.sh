#!/usr/bin/env bash
# Gathers the headers, static libraries and CMake configs of megacache's C++ dependencies
# into .deps/, for a machine that has a compiler but not the Debian -dev packages (the lent
# GPU host). Build there with: pip install -C cmake.define.MEGACACHE_DEPS_PREFIX=$PWD/.deps .
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
rm -rf .deps && mkdir -p .deps/include .deps/lib .deps/share/cmake
arch_include=/usr/include/$(gcc -print-multiarch)
arch_lib=/usr/lib/$(gcc -print-multiarch)
cp -r /usr/include/openssl .deps/include/
cp "$arch_include"/openssl/* .deps/include/openssl/
cp /usr/include/libdeflate.h /usr/include/xxhash.h /usr/include/zstd.h /usr/include/zstd_errors.h \
  /usr/include/sodium.h .deps/include/
cp -r /usr/include/sodium /usr/include/CLI /usr/include/nlohmann .deps/include/
# Static where Debian builds them position-independent; libsodium.a is not, so its shared
# library travels (run with LD_LIBRARY_PATH=.deps/lib).
cp "$arch_lib"/libdeflate.a "$arch_lib"/libcrypto.a .deps/lib/
cp -P "$arch_lib"/libsodium.so* .deps/lib/
cp -r /usr/share/cmake/CLI11 /usr/share/cmake/nlohmann_json .deps/share/cmake/
du -sh .deps
