#!/usr/bin/env bash
# The engine's tests built for aarch64 and run under qemu-user: checks the portable kernels
# (what ARM boards run; there is no NEON path yet) on the architecture itself. Slow (about
# 8 minutes for the tests below on 2 cores); not part of .ci/run.
# Needs: rustup target add aarch64-unknown-linux-gnu; apt-get install gcc-aarch64-linux-gnu qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
bash scripts/fetch-models.sh all
cargo test --release --target aarch64-unknown-linux-gnu -p slm-engine --lib --test architectures --test batch_invariance "$@"
