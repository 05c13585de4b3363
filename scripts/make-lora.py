#!/usr/bin/env python3
"""Writes a seeded random LoRA adapter for a GGUF base model, in llama.cpp's GGUF adapter
format (what convert_lora_to_gguf.py writes: general.type = adapter, adapter.type = lora,
adapter.lora.alpha, `<base tensor>.lora_a` with ne [in, rank] in F16 and `.lora_b` with ne
[rank, out] in F32), written with the `gguf` package llama.cpp's own converters use. The
adapter stands in for a fine-tune: llama.cpp (`llama-server --lora`) and slm read the same
file, so scripts/record-goldens.py --lora records what the parity tests compare against.

A is uniform with variance 1/in (A·x keeps the activations' scale), B uniform in ±B_RANGE:
enough to change greedy answers on Qwen2.5-Coder-0.5B while they stay fluent. Deterministic:
numpy's PCG64 from the seed, tensors in the base file's order.

Usage: scripts/make-lora.py BASE.gguf OUT.gguf [--rank 8] [--alpha 16] [--seed 0] [--b-range 0.02]
"""

import argparse

import numpy as np
import gguf

# The projections a typical fine-tune adapts: q/k/v/o and gate/up/down (and fused ones).
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--b-range", type=float, default=0.02)
    a = ap.parse_args()
    reader = gguf.GGUFReader(a.base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(a.seed)
    w = gguf.GGUFWriter(a.out, arch)
    w.add_string("general.type", "adapter")
    w.add_string("general.name", f"random rank-{a.rank} LoRA (seed {a.seed})")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", a.alpha)
    n = 0
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in TARGETS or parts[3] != "weight":
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])  # GGUF order: ne[0] is the input width
        ua = np.sqrt(3.0 / n_in)
        lora_a = rng.uniform(-ua, ua, size=(a.rank, n_in)).astype(np.float16)
        lora_b = rng.uniform(-a.b_range, a.b_range, size=(n_out, a.rank)).astype(np.float32)
        w.add_tensor(f"{t.name}.lora_a", lora_a)
        w.add_tensor(f"{t.name}.lora_b", lora_b)
        n += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"make-lora: wrote {a.out}: {n} adapted matrices, rank {a.rank}, alpha {a.alpha}, seed {a.seed}")


if __name__ == "__main__":
    main()
