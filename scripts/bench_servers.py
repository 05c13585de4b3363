#!/usr/bin/env python3
"""Load benchmark for any OpenAI-compatible server (a benchmark, not a test).

Sends N concurrent streaming /v1/completions requests, each with the same-length prompt
(token ids, so every server sees identical input) and max_tokens generated with ignore_eos,
and prints aggregate and per-stream decode tok/s. Run it against slm and llama.cpp's server
on the same machine and GGUF to compare them in one run:

    python3 scripts/bench_servers.py --url http://127.0.0.1:8080 --concurrency 1,16

`--model NAME` sends that `model` (a LoRA adapter's name on slm or vLLM, for instance).
"""

import argparse
import json
import threading
import time
import urllib.request


def one(url, prompt, max_tokens, out, i, model=None):
    body = json.dumps({**({"model": model} if model else {}), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.time()
    first = None
    n = 0
    usage = None
    with urllib.request.urlopen(req) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                n += 1
                first = first or time.time()
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
    # Tokens from the usage report when the server sends one, else streamed chunks.
    out[i] = (t0, first or time.time(), time.time(), usage or n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    print(f"{a.url}{' model ' + a.model if a.model else ''}: prompts of {a.prompt_tokens} tokens, {a.gen_tokens} generated")
    print(f"{'streams':>8} {'agg tok/s':>10} {'stream tok/s':>13} {'TTFT s':>8} {'wall s':>8}")
    for c in [int(x) for x in a.concurrency.split(",")]:
        prompts = [[(1000 + 37 * i + 11 * j) % 30000 + 100 for j in range(a.prompt_tokens)] for i in range(c)]
        out = [None] * c
        t0 = time.time()
        ts = [threading.Thread(target=one, args=(a.url, prompts[i], a.gen_tokens, out, i, a.model)) for i in range(c)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.time() - t0
        total = sum(o[3] for o in out)
        per = sum((o[3] - 1) / (o[2] - o[1]) for o in out if o[3] > 1 and o[2] > o[1]) / c
        ttft = sum(o[1] - o[0] for o in out) / c
        print(f"{c:>8} {total / wall:>10.1f} {per:>13.1f} {ttft:>8.2f} {wall:>8.2f}")


if __name__ == "__main__":
    main()
