#!/usr/bin/env python3
"""Editor code-completion latency: `/infill` requests for 64 tokens, one at a time, against slm
and (optionally) llama-server on the same GGUF. Cursor positions come from this repository's
own Rust sources (prefix: up to 60 lines before, suffix: up to 20 after), the same for both
servers, in two patterns: `cold` (each request at a new place, nothing cached) and `typing`
(at each place, four more requests as the next characters are typed: what an editor sends,
where the cached prefix pays). Reports p50 / p95 of the whole request and of the first token
(streamed), and tokens/s.

  python3 scripts/bench_infill.py --model ~/.cache/slm/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
      [--llama-server /work/llama/build/bin/llama-server] [--requests 20]

Each server starts on its own port with the same thread count, runs alone (never both at
once), and is stopped before the next; a warm-up request comes first.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchlib import cpu_label, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def typing_cases(cases, keystrokes=4):
    """After each cold request, the user types the next characters of the file."""
    out = []
    for prefix, suffix in cases:
        for k in range(1, keystrokes + 1):
            out.append((prefix + suffix[:k], suffix[k:]))
    return out


def cursor_cases(n, seed=1):
    files = sorted(ROOT.glob("crates/*/src/**/*.rs"))
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        lines = rng.choice(files).read_text().splitlines(keepends=True)
        if len(lines) < 40:
            continue
        at = rng.randrange(20, len(lines) - 10)
        line = lines[at]
        cut = rng.randrange(0, max(1, len(line.rstrip("\n"))))
        prefix = "".join(lines[max(0, at - 60) : at]) + line[:cut]
        suffix = line[cut:] + "".join(lines[at + 1 : at + 21])
        cases.append((prefix, suffix))
    return cases


def infill(base, prefix, suffix, n_predict):
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": n_predict, "temperature": 0,
            "stream": True, "cache_prompt": True, "ignore_eos": True}
    req = urllib.request.Request(base + "/infill", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, n = None, 0
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("content") and first is None:
                first = time.perf_counter() - t0
            if chunk.get("stop"):
                n = chunk.get("tokens_predicted", n)
                break
    total = time.perf_counter() - t0
    return total, first if first is not None else total, n


def run(name, cmd, base, cases, n_predict):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(base, proc)
        infill(base, "fn main() {\n", "}\n", 4)  # warm-up
        results = {}
        for kind in ("cold", "typing"):
            results[kind] = ([], [], [0])
        for i, case in enumerate(cases):
            for kind, c in [("cold", case)] + [("typing", t) for t in typing_cases([case])]:
                t, f, n = infill(base, *c, n_predict)
                results[kind][0].append(t)
                results[kind][1].append(f)
                results[kind][2][0] += n
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] * 1e3  # noqa: E731
    for kind, (totals, firsts, tokens) in results.items():
        print(f"{name:<12} {kind:<7} total p50 {q(totals, 50):6.0f} ms  p95 {q(totals, 95):6.0f} ms | first token p50 "
              f"{q(firsts, 50):6.0f} ms  p95 {q(firsts, 95):6.0f} ms | {tokens[0] / sum(totals):5.1f} tok/s")
    return {k: statistics.median(v[0]) for k, v in results.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-server")
    ap.add_argument("--requests", type=int, default=10, help="cursor places (each: 1 cold + 4 typing requests)")
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    cases = cursor_cases(a.requests)
    print(f"{cpu_label()}, {a.threads} threads, {a.requests} places x (1 cold + 4 typing) infill requests x {a.n_predict} tokens, {Path(a.model).name}")
    env_threads = {**os.environ, "SLM_THREADS": str(a.threads)}
    os.environ.update(env_threads)
    slm = run("slm", [str(ROOT / "target/release/slm"), "serve", "--port", "18470", "--model", a.model],
              "http://127.0.0.1:18470", cases, a.n_predict)
    if a.llama_server:
        llama = run("llama-server", [a.llama_server, "-m", a.model, "--port", "18471", "-t", str(a.threads),
                                     "-c", "4096", "-np", "1", "--no-webui"],
                    "http://127.0.0.1:18471", cases, a.n_predict)
        for kind in slm:
            print(f"{kind}: median latency llama-server / slm = {llama[kind] / slm[kind]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
