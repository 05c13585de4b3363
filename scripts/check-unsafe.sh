#!/usr/bin/env bash
# Runs the code behind slm's `unsafe` under checkers (not in CI: each builds the engine's
# dependencies again, for minutes):
#
#   miri   the portable level under Miri (nightly `miri` component): the kernel, dense, attention,
#          lanes, pool, block-manager and stop-string unit tests, built for baseline x86-64 so
#          only the portable code exists; catches out-of-bounds, aliasing (Stacked Borrows),
#          data races and uninitialized reads in the code it runs.
#   asan   the SIMD levels under AddressSanitizer (nightly, -Zsanitizer=address, std rebuilt
#          with it): the same unit tests at every level this CPU has (AVX-512 VNNI, AVX2,
#          portable), which Miri cannot run.
#   valgrind  fallback when no nightly is present: memcheck over the release test binary
#          (valgrind knows no AVX-512, so it checks the AVX2 and portable levels).
#
# Usage: scripts/check-unsafe.sh [miri] [asan] [valgrind]   (default: miri asan)
set -euo pipefail
cd "$(dirname "$0")/.."

# Unit tests whose code holds or drives the unsafe blocks (names are substring filters).
FILTERS=(layers::kernels layers::dense layers::attention kv_quant layers::activation layers::pool layers::vecmath block_manager stop::)
# Heavy tests that quantize with candle: too slow to interpret, and not our unsafe code.
MIRI_SKIP=(k_quants_decode_like_candle legacy_quants_decode_like_candle packed_columns_dequantize_like_candle)

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(miri asan)
host=x86_64-unknown-linux-gnu

run_miri() {
  rustup +nightly component list --installed | grep -q '^miri' \
    || { echo "check-unsafe: the nightly miri component is missing (rustup +nightly component add miri)"; return 1; }
  local skips=()
  for s in "${MIRI_SKIP[@]}"; do skips+=(--skip "$s"); done
  for f in "${FILTERS[@]}"; do
    echo "== miri: $f"
    # Baseline x86-64: no AVX at compile time, so only the portable paths are built and
    # `Level::is_supported` reports the portable level alone. The process-wide worker pool's
    # threads live until exit by design, hence -Zmiri-ignore-leaks.
    SLM_KERNEL=scalar SLM_THREADS=2 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-cpu=x86-64" \
      MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-ignore-leaks" \
      cargo +nightly miri test -p slm-engine --lib -- "$f" "${skips[@]}"
  done
}

run_asan() {
  echo "== asan: ${FILTERS[*]}"
  RUSTFLAGS="-Zsanitizer=address -C target-cpu=x86-64-v3" ASAN_OPTIONS=detect_leaks=1 \
    cargo +nightly test -Zbuild-std --target "$host" --target-dir target/asan -p slm-engine --lib -- "${FILTERS[@]}"
}

run_valgrind() {
  command -v valgrind >/dev/null || { echo "check-unsafe: valgrind is not installed (apt-get install valgrind)"; return 1; }
  cargo test --release -p slm-engine --lib --no-run
  local bin
  bin=$(ls -t target/release/deps/slm_engine-* | grep -v '\.d$' | head -1)
  echo "== valgrind: $bin ${FILTERS[*]}"
  valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite "$bin" "${FILTERS[@]}"
}

for w in "${want[@]}"; do
  "run_$w"
done
echo "check-unsafe: ${want[*]}: no errors"
