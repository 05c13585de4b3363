#!/usr/bin/env bash
# The whole test suite, as a newcomer runs it (and as .ci/run does): fetches the two real
# models if they are missing, then runs every test of the workspace in release mode (the
# parity tests run the real models and need optimized code).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh all
cargo test --release --workspace "$@"
