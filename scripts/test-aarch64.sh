#!/usr/bin/env bash
# The engine's tests built for aarch64 and run under qemu-user, once per kernel level:
# `-cpu max` (NEON + dotprod + i8mm: every level is compared with the portable one),
# `-cpu cortex-a76` (dotprod, no i8mm: the Raspberry Pi 5's core) and `-cpu cortex-a72`
# (plain NEON: the Raspberry Pi 4's). Emulated, so it proves bits, not speed. Not part of
# .ci/run (about 10 minutes to build, a few minutes per CPU on 2 cores).
#   scripts/test-aarch64.sh                 kernel, attention and dense-layer unit tests
#   scripts/test-aarch64.sh --full          also the real-model architecture and
#                                           batch-invariance tests (slow: the models run emulated)
# Installs what it needs: the rustup target, gcc-aarch64-linux-gnu and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
[ "${1:-}" = --full ] && full=1
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-g++ >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu >/dev/null
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
tests=(--lib)
[ $full = 1 ] && { bash scripts/fetch-models.sh all; tests+=(--test architectures --test batch_invariance); }
# Build once, then run each test binary under each CPU.
mapfile -t bins < <(cargo test --release --target aarch64-unknown-linux-gnu -p slm-engine "${tests[@]}" --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
[ ${#bins[@]} -gt 0 ] || { echo "no test binaries built" >&2; exit 1; }
for cpu in max cortex-a76 cortex-a72; do
  for bin in "${bins[@]}"; do
    echo "== $cpu: $(basename "$bin")"
    # The library's own tests: the layers (kernels, attention, dense); its real-model tests
    # are the integration tests' business. Integration tests read fixtures relative to the
    # package.
    filter=()
    case "$(basename "$bin")" in slm_engine-*) filter=(layers::) ;; esac
    # The architecture tests compare with candle-transformers, whose aarch64 quantized dot
    # products use `sdot` unconditionally: on a core without dotprod the reference itself
    # stops with SIGILL. (slm reaches candle's kernels only for weight types its own do not
    # take, none of which real GGUF models use.)
    case "$cpu:$(basename "$bin")" in cortex-a72:architectures-*) echo "(skipped: candle's reference needs dotprod)"; continue ;; esac
    (cd crates/engine && qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$bin" --test-threads 2 "${filter[@]}")
  done
done
echo "aarch64 tests passed under qemu: max (i8mm), cortex-a76 (dotprod), cortex-a72 (neon; architecture tests skipped)"
