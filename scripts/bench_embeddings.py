#!/usr/bin/env python3
"""Embedding throughput over HTTP, slm against llama.cpp's server on the same GGUF, in one
run (this machine's bandwidth swings between runs, so compare the ratio). 1,000 sentences of
8-64 tokens are sent in requests of 1, 32 and 256 inputs (4 requests in flight for batch 1,
one at a time otherwise); then the latency of one short input (median of 50).

Usage: scripts/bench_embeddings.py [--gguf PATH] [--llama-dir /work/llama] [--slm target/release/slm]
Prints a table, and the figures as JSON on the last line.
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SLM_HOME", Path.home() / ".cache/slm")) / "models"
WORDS = ("model server token vector search document answer local small fast embed query index chunk retrieval "
         "memory cache batch kernel thread request stream latency edge device quantized weight layer").split()


def sentences(n, seed=7):
    rng = random.Random(seed)
    # 8-64 tokens: about one token per word plus [CLS]/[SEP].
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 62))) for _ in range(n)]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def measure(base, texts):
    url = base + "/v1/embeddings"
    out = {}
    for bs in (1, 32, 256):
        chunks = [texts[i:i + bs] for i in range(0, len(texts), bs)]
        post(url, {"input": chunks[0]})  # warm-up
        t = time.time()
        if bs == 1:
            with ThreadPoolExecutor(4) as ex:
                list(ex.map(lambda c: post(url, {"input": c}), chunks))
        else:
            for c in chunks:
                post(url, {"input": c})
        out[f"batch_{bs}_per_s"] = len(texts) / (time.time() - t)
    lat = []
    for _ in range(50):
        t = time.time()
        post(url, {"input": "How do I reset my password?"})
        lat.append(time.time() - t)
    out["short_latency_ms"] = statistics.median(lat) * 1e3
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=str(MODELS / "all-minilm-l6-v2-f16.gguf"))
    ap.add_argument("--llama-dir", default="/work/llama", type=Path)
    ap.add_argument("--slm", default=str(ROOT / "target/release/slm"))
    a = ap.parse_args()
    texts = sentences(1000)
    cpu = open("/proc/cpuinfo").read()
    level = "avx512_vnni" if "avx512_vnni" in cpu else ("avx2" if " avx2" in cpu else "other")
    results = {"cpu": re.search(r"model name\s*:\s*(.*)", cpu).group(1), "kernel_level": level, "threads": os.cpu_count()}
    servers = {
        "slm": [a.slm, "serve", "--model", a.gguf, "--port", "8311"],
        "llama.cpp": [str(a.llama_dir / "build/bin/llama-server"), "-m", a.gguf, "--embeddings", "--port", "8312",
                      "-c", "65536", "-np", "8", "-b", "8192", "-ub", "8192", "-t", str(os.cpu_count()), "--no-webui"],
    }
    for name, cmd in servers.items():
        port = cmd[cmd.index("--port") + 1]
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(base, proc)
            results[name] = measure(base, texts)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    keys = ["batch_1_per_s", "batch_32_per_s", "batch_256_per_s", "short_latency_ms"]
    print(f"{'':18}" + "".join(f"{k:>18}" for k in keys))
    for name in servers:
        print(f"{name:18}" + "".join(f"{results[name][k]:18.1f}" for k in keys))
    results["ratio_slm_over_llama"] = {k: results["slm"][k] / results["llama.cpp"][k] for k in keys}
    print(f"{'slm / llama.cpp':18}" + "".join(f"{results['ratio_slm_over_llama'][k]:18.2f}" for k in keys))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
