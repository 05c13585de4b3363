#!/usr/bin/env bash
# The whole test suite, as a newcomer runs it (and as .ci/run does): `cargo fmt --check` and
# clippy with warnings as errors (they fail fast), fetches the real models if they are
# missing, runs every Rust test in release mode (the parity tests run the real models and need
# optimized code), then the end-to-end tests: a real `slm serve` driven by the official openai
# Python SDK and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
bash scripts/fetch-models.sh all
bash scripts/fetch-models.sh qwen1.5b  # the speculative target's parity tests
cargo test --release --workspace "$@"
cargo build --release --bin slm
# The chat page's browser tests drive Debian's Chromium (Playwright cannot download its own
# browser here).
if ! command -v chromium > /dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q chromium > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q chromium > /dev/null; }
  else
    sudo apt-get install -y -q chromium > /dev/null
  fi
fi
venv=target/e2e-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai anthropic openai-agents pytest httpx jsonschema huggingface_hub schemathesis playwright kubernetes-validate
"$venv/bin/python" -m pytest -q tests/e2e
