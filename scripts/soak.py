#!/usr/bin/env python3
"""Soak test (not in CI): N concurrent streams of mixed requests against a running `slm serve`
for a while — plain and streamed chat, tool calls, json_schema, n=2, completions, and requests
cancelled part way — sampling the server's RSS every interval. Prints every sample, the
errors seen, and the RSS slope (least squares, MiB per hour) after the warm-up.

    python3 scripts/soak.py --url http://127.0.0.1:8080 --pid $(pgrep -f 'slm serve') \
        --minutes 30 --streams 4 [--api-key KEY]
"""

import argparse
import json
import random
import threading
import time
import urllib.request

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post(url, path, body, key, stream=False, cut_after=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(req, timeout=300) as r:
        if not stream:
            return json.loads(r.read())
        n = 0
        for line in r:
            if line.startswith(b"data: "):
                n += 1
                if cut_after is not None and n >= cut_after:
                    return None  # closing the response aborts the request
        return None


def one(url, key, rng):
    kind = rng.choice(["chat", "stream", "tools", "schema", "n2", "completion", "cancel"])
    msgs = [{"role": "user", "content": rng.choice(["Name three colors.", "What's the weather in Hanoi?",
                                                       "Write a haiku about rust.", "Tell me about Ada Lovelace."])}]
    if kind == "chat":
        post(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 48}, key)
    elif kind == "stream":
        post(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 48, "stream": True}, key, stream=True)
    elif kind == "tools":
        post(url, "/v1/chat/completions", {"messages": msgs, "tools": TOOLS, "max_tokens": 64}, key)
    elif kind == "schema":
        post(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 64,
                                           "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}}, key)
    elif kind == "n2":
        post(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 32, "n": 2, "temperature": 0.8, "seed": rng.randrange(1 << 30)}, key)
    elif kind == "completion":
        post(url, "/v1/completions", {"prompt": "def fibonacci(n):", "max_tokens": 48}, key)
    else:
        post(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 200, "stream": True}, key, stream=True,
             cut_after=rng.randrange(1, 20))
    return kind


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, required=True, help="the slm serve process (for RSS)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--interval", type=float, default=30, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60, help="seconds left out of the slope")
    ap.add_argument("--api-key")
    a = ap.parse_args()
    stop = time.time() + a.minutes * 60
    counts, errors, lock = {}, [], threading.Lock()

    def worker(i):
        rng = random.Random(i)
        while time.time() < stop:
            try:
                k = one(a.url, a.api_key, rng)
                with lock:
                    counts[k] = counts.get(k, 0) + 1
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.streams)]
    for t in threads:
        t.start()
    t0, samples = time.time(), []
    while time.time() < stop:
        samples.append((time.time() - t0, rss_mib(a.pid)))
        print(f"t={samples[-1][0]:7.0f} s  RSS {samples[-1][1]:7.1f} MiB  requests {sum(counts.values())}  errors {len(errors)}", flush=True)
        time.sleep(min(a.interval, max(0, stop - time.time())))
    for t in threads:
        t.join(timeout=300)
    samples.append((time.time() - t0, rss_mib(a.pid)))
    pts = [(t, r) for t, r in samples if t >= a.warmup] or samples
    n = len(pts)
    mt, mr = sum(t for t, _ in pts) / n, sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = (sum((t - mt) * (r - mr) for t, r in pts) / var * 3600) if var else 0.0
    print(json.dumps({"requests": counts, "errors": len(errors), "first_errors": errors[:5],
                      "rss_first_mib": round(pts[0][1], 1), "rss_last_mib": round(pts[-1][1], 1),
                      "rss_slope_mib_per_hour": round(slope, 2), "samples": n}, indent=1))


if __name__ == "__main__":
    main()
