#!/usr/bin/env bash
# slm against llama.cpp on one GGUF, in one run (a benchmark, not a test: it prints figures).
# This machine's memory bandwidth swings between runs, so compare the ratios of one run, never
# figures from different runs.
#
#   engine: `slm bench` (prefill of 128- and 512-token prompts, decode of 128 tokens at 1 and 16
#           sequences) beside `llama-bench -p 128,512 -n 128` (one sequence);
#   server: scripts/bench_servers.py (streamed /v1/completions, token-id prompts, ignore_eos)
#           at 1 and 16 concurrent streams against `slm serve` and `llama-server -np 16`.
#
# Several slm binaries (e.g. a build of main before a change, and after) run in turn, so a
# before/after comparison shares the run with llama.cpp.
#
# Usage: scripts/bench_vs_llama.sh MODEL.gguf [SLM_BINARY ...]   (default target/release/slm)
#        LLAMA_DIR (default /work/llama) holds llama.cpp built by scripts/build-llama-cpp.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1"
shift
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/slm)
llama="${LLAMA_DIR:-/work/llama}/build/bin"
threads="${THREADS:-$(nproc)}"

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "$(grep -m1 -o -w 'avx512_vnni\|avx512f' /proc/cpuinfo | head -1 || true)" \
  "$(grep -m1 -o -w avx2 /proc/cpuinfo | head -1)"
echo "model: $model; threads: $threads"

wait_ready() {
  for _ in $(seq 1 600); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server at $1 did not become ready" >&2
  return 1
}

for b in "${bins[@]}"; do
  echo "== engine: $b"
  SLM_THREADS="$threads" "$b" bench --model "$model" --concurrency 1,16 --prompt-tokens 128 --gen-tokens 128
  SLM_THREADS="$threads" "$b" bench --model "$model" --concurrency 1 --prompt-tokens 512 --gen-tokens 16
done
echo "== engine: llama-bench"
"$llama/llama-bench" -m "$model" -t "$threads" -p 128,512 -n 128

port=18931
for b in "${bins[@]}"; do
  echo "== server: $b"
  SLM_THREADS="$threads" "$b" serve --model "$model" --port "$port" >/tmp/bench-slm.log 2>&1 &
  pid=$!
  wait_ready "http://127.0.0.1:$port"
  python3 scripts/bench_servers.py --url "http://127.0.0.1:$port" --concurrency 1,16
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
echo "== server: llama-server -np 16"
"$llama/llama-server" -m "$model" --port "$port" -t "$threads" -np 16 -c $((16 * 512)) >/tmp/bench-llama.log 2>&1 &
pid=$!
wait_ready "http://127.0.0.1:$port"
python3 scripts/bench_servers.py --url "http://127.0.0.1:$port" --concurrency 1,16
kill "$pid"
wait "$pid" 2>/dev/null || true
