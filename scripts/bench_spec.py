#!/usr/bin/env python3
"""Speculative-decoding benchmark (a benchmark, not a test): the workloads in tests/workloads/
sent to slm (speculation on, and off with the `speculative: false` extension) and to
llama-server (plain, each n-gram mode, and a draft model with -md), one server at a time on
the same GGUF, greedy. Prints decode tok/s per workload and setting (client-side: tokens
after the first over the time from the first to the last), ratios against slm plain and
against llama.cpp's best speculative setting, and acceptance rates (slm: /metrics deltas;
llama.cpp: the `timings.draft_n` / `draft_n_accepted` it reports).

    python3 scripts/bench_spec.py --model ~/.cache/slm/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
        --draft ~/.cache/slm/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --limit 6 --max-tokens 256

Streams: `--streams 1` (default) runs the prompts one after another; `--streams 16` sends 16
at once (prompts repeated to fill them) and only runs slm on/off (the no-slowdown check).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import cpu_label

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["code_edit", "extraction", "rag", "chat"]


def load(name, limit):
    with open(ROOT / "tests/workloads" / f"{name}.jsonl") as f:
        return [json.loads(l) for l in f][:limit]


def wait_ready(url, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                return json.loads(r.read())["data"][0]["id"]
        except Exception:
            time.sleep(1)
    raise SystemExit("server did not become ready")


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def one(url, model, item, max_tokens, extra, out, i):
    body = {"model": model, "messages": item["messages"], "max_tokens": min(max_tokens, item["max_tokens"]),
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    first = last = None
    n, usage, timings = 0, None, None
    with urllib.request.urlopen(req, timeout=1800) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            ch = chunk.get("choices") or []
            if ch and (ch[0].get("delta") or {}).get("content"):
                n += 1
                first = first or time.time()
                last = time.time()
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
            if chunk.get("timings"):
                timings = chunk["timings"]
    out[i] = {"first": first, "last": last, "tokens": usage or n, "timings": timings}


def run_set(url, model, items, max_tokens, extra, streams):
    """Decode tok/s per stream, averaged, and llama.cpp's draft counts when it reports them."""
    if streams > 1:
        items = [items[k % len(items)] for k in range(streams)]
    rates, drafted, accepted, total = [], 0, 0, 0
    batches = [items] if streams > 1 else [[it] for it in items]
    for batch in batches:
        out = [None] * len(batch)
        ts = [threading.Thread(target=one, args=(url, model, it, max_tokens, extra, out, k)) for k, it in enumerate(batch)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for o in out:
            total += o["tokens"]
            if o["tokens"] > 1 and o["last"] > o["first"]:
                rates.append((o["tokens"] - 1) / (o["last"] - o["first"]))
            if o["timings"]:
                drafted += o["timings"].get("draft_n", 0)
                accepted += o["timings"].get("draft_n_accepted", 0)
    return sum(rates) / max(len(rates), 1), drafted, accepted, total


def serve(cmd, port, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    model = wait_ready(url, proc)
    return proc, url, model


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--draft", help="draft GGUF for llama-server -md")
    ap.add_argument("--slm", default=str(ROOT / "target/release/slm"))
    ap.add_argument("--llama-dir", default="/work/llama", type=Path)
    ap.add_argument("--limit", type=int, default=16, help="prompts per workload")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--no-slm-draft", action="store_true", help="skip slm with --draft-model")
    ap.add_argument("--no-slm", action="store_true", help="only llama.cpp's settings (no ratios)")
    ap.add_argument("--llama-modes", default="ngram-simple;ngram-simple n3=--spec-type ngram-simple --spec-ngram-simple-size-n 3 --spec-ngram-simple-size-m 16;ngram-map-k;ngram-mod",
                    help="';'-separated llama-server settings: a --spec-type value, or NAME=FLAGS")
    ap.add_argument("--port", type=int, default=8291)
    a = ap.parse_args()
    names = a.workloads.split(",")
    sets = {w: load(w, a.limit) for w in names}
    print(f"bench_spec: {Path(a.model).name}, {a.streams} stream(s), {a.limit} prompts/workload, "
          f"max_tokens {a.max_tokens}, CPU {cpu_label()}, {os.cpu_count()} threads")
    results = {}  # setting -> workload -> (tok/s, drafted, accepted)

    # slm: one server, speculation toggled per request; then one with the draft model.
    port = a.port
    slm_runs = [([], [("slm plain", {"speculative": False}), ("slm spec", {})])]
    if a.draft and not a.no_slm_draft:
        slm_runs.append((["--draft-model", a.draft], [("slm spec -md 0.5B", {})]))
    for flags_, modes in [] if a.no_slm else slm_runs:
        port += 1
        proc, url, model = serve([a.slm, "serve", "--model", a.model, "--port", str(port), *flags_], port)
        try:
            for setting, extra in modes:
                for w in names:
                    names_ = ["slm_spec_draft_tokens_total", "slm_spec_accepted_tokens_total",
                              "slm_spec_model_draft_tokens_total", "slm_spec_model_accepted_tokens_total"]
                    before = [metric(url, n) for n in names_]
                    tps, _, _, _ = run_set(url, model, sets[w], a.max_tokens, extra, a.streams)
                    d, acc, md, macc = (metric(url, n) - b for n, b in zip(names_, before))
                    results.setdefault(setting, {})[w] = (tps, d, acc)
                    split = f" (draft model {int(macc)}/{int(md)})" if md else ""
                    print(f"  {setting:<22} {w:<11} {tps:7.1f} tok/s  drafted {int(d):6d} accepted {int(acc):6d}{split}",
                          flush=True)
        finally:
            stop(proc)

    if not a.no_llama and a.streams == 1:
        server = str(a.llama_dir / "build/bin/llama-server")
        base = [server, "-m", a.model, "-t", str(os.cpu_count()), "-c", "8192", "-np", "1", "--port", str(a.port),
                "--no-webui"]
        settings = [] if a.no_slm else [("llama plain", [])]
        for m in filter(None, a.llama_modes.split(";")):
            name, _, flags_ = m.partition("=")
            settings.append((f"llama {name}", flags_.split() if flags_ else ["--spec-type", name]))
        if a.draft:
            settings.append(("llama -md 0.5B", ["--spec-type", "draft-simple", "-md", a.draft, "--spec-draft-n-max", "16"]))
        for setting, flags_ in settings:
            # A fresh port each time: a stopped server's socket may linger.
            port += 1
            base[base.index("--port") + 1] = str(port)
            proc, url, model = serve(base + flags_, port)
            try:
                for w in names:
                    tps, d, acc, _ = run_set(url, model, sets[w], a.max_tokens, {}, 1)
                    results.setdefault(setting, {})[w] = (tps, d, acc)
                    print(f"  {setting:<22} {w:<11} {tps:7.1f} tok/s  drafted {d:6d} accepted {acc:6d}", flush=True)
            finally:
                stop(proc)

    print(f"\n{'setting':<22}" + "".join(f"{w:>12}" for w in names))
    for setting, per in results.items():
        print(f"{setting:<22}" + "".join(f"{per[w][0]:>12.1f}" for w in names))
    if a.no_slm:
        return
    plain = results["slm plain"]
    for s_ in [k for k in results if k.startswith("slm spec")]:
        print(f"{s_ + ' / slm plain':<22}" + "".join(f"{results[s_][w][0] / plain[w][0]:>11.2f}x" for w in names))
    llama_spec = {s: p for s, p in results.items() if s.startswith("llama") and s != "llama plain"}
    if llama_spec:
        best = {w: max(llama_spec.items(), key=lambda kv: kv[1][w][0]) for w in names}
        print(f"{'llama best spec':<22}" + "".join(f"{best[w][1][w][0]:>12.1f}" for w in names))
        print(f"{'  (which)':<22}" + "".join(f"{re.sub('^llama ', '', best[w][0]):>12}" for w in names))
        for s_ in [k for k in results if k.startswith("slm spec")]:
            print(f"{s_.replace('slm ', '') + ' / llama best':<22}" + "".join(
                f"{results[s_][w][0] / best[w][1][w][0]:>11.2f}x" for w in names))
    print("\nacceptance (accepted / drafted):")
    for setting, per in results.items():
        if any(per[w][1] for w in names):
            print(f"{setting:<22}" + "".join(
                f"{(per[w][2] / per[w][1] if per[w][1] else 0):>12.2f}" for w in names))


if __name__ == "__main__":
    main()
