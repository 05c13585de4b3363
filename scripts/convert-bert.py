#!/usr/bin/env python3
"""Converts a Hugging Face BERT-family sentence-embedding model (model.safetensors +
tokenizer.json + config.json + 1_Pooling/config.json, as sentence-transformers ships them) into
a GGUF in the layout llama.cpp's convert_hf_to_gguf.py writes for `bert` (tensor names,
metadata keys, the "phantom space" WordPiece vocabulary), so both slm and llama.cpp read it.

Usage: convert-bert.py MODEL_DIR OUT.gguf [--outtype f16|f32]
Needs: gguf, safetensors, numpy (scripts/fetch-models.sh installs them in a private venv).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, PoolingType, TokenType
from safetensors.numpy import load_file

LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
TOP = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}


def gguf_name(hf: str):
    name = hf.removeprefix("bert.")
    base, _, kind = name.rpartition(".")
    kind = {"gamma": "weight", "beta": "bias"}.get(kind, kind)
    if base in TOP:
        return f"{TOP[base]}.{kind}"
    if base.startswith("encoder.layer."):
        rest = base[len("encoder.layer."):]
        n, _, sub = rest.partition(".")
        if sub in LAYER:
            return f"blk.{n}.{LAYER[sub]}.{kind}"
    if base.startswith("pooler."):
        return None  # sentence-transformers pools the hidden states itself
    sys.exit(f"convert-bert: unknown tensor {hf}")


def phantom(tok: str) -> str:
    """llama.cpp's WordPiece vocabulary: word starts get ▁, continuations lose ##."""
    if tok.startswith("[") and tok.endswith("]"):
        return tok
    if tok.startswith("##"):
        return tok[2:]
    return "\u2581" + tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--outtype", choices=["f16", "f32"], default="f16")
    a = ap.parse_args()
    d = a.model_dir
    cfg = json.loads((d / "config.json").read_text())
    tok = json.loads((d / "tokenizer.json").read_text())
    pooling_cfg = d / "1_Pooling" / "config.json"
    pooling = PoolingType.MEAN
    if pooling_cfg.exists():
        p = json.loads(pooling_cfg.read_text())
        if p.get("pooling_mode_cls_token"):
            pooling = PoolingType.CLS
        elif p.get("pooling_mode_lasttoken"):
            pooling = PoolingType.LAST

    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    types = [TokenType.CONTROL if t in special or (t.startswith("[") and t.endswith("]")) else TokenType.NORMAL for t in tokens]
    types = [TokenType.UNKNOWN if t == "[UNK]" else ty for t, ty in zip(tokens, types)]

    w = GGUFWriter(str(a.out), "bert")
    w.add_name(d.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(pooling)
    w.add_file_type(1 if a.outtype == "f16" else 0)
    w.add_tokenizer_model("bert")
    w.add_token_list([phantom(t) for t in tokens])
    w.add_token_types([int(t) for t in types])
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    ids = {"[CLS]": "cls", "[SEP]": "seperator", "[UNK]": "unknown", "[PAD]": "padding", "[MASK]": "mask"}
    for text, key in ids.items():
        if text in vocab:
            w.add_uint32(f"tokenizer.ggml.{key}_token_id", vocab[text])
    w.add_bos_token_id(vocab["[CLS]"])
    w.add_eos_token_id(vocab["[SEP]"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    tensors = load_file(str(d / "model.safetensors"))
    for hf in sorted(tensors):
        if hf.endswith("position_ids"):
            continue
        name = gguf_name(hf)
        if name is None:
            continue
        t = tensors[hf].astype(np.float32)
        if a.outtype == "f16" and t.ndim == 2 and not name.startswith("token_types"):
            t = t.astype(np.float16)
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"convert-bert: wrote {a.out}")


if __name__ == "__main__":
    main()
