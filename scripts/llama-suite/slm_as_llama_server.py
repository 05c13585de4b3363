#!/usr/bin/env python3
"""Stands in for `llama-server` when llama.cpp's own server tests run against slm
(scripts/llama-suite/run.sh): reads the llama-server flags the suite passes, maps each
Hugging Face model it names to a local model of the same kind (its tiny test models are not
reachable here), writes an slm config and execs `slm serve`. Flags slm has no equivalent for
are ignored, so the tests that need them fail on behaviour and are counted as such."""

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("SLM_HOME", Path.home() / ".cache" / "slm")) / "models"


def local_model(repo, file):
    """The suite's test models by kind: stories (llama) → SmolLM2, infill → Qwen2.5-Coder
    (FIM tokens), BERT embedders and rerankers → all-MiniLM, tiny Gemma → Gemma 3."""
    name = f"{repo or ''}/{file or ''}".lower()
    if "bge" in name or "bert" in name or "rerank" in name or "embed" in name:
        return "all-minilm-l6-v2-f16"
    if "infill" in name or "coder" in name:
        return "qwen2.5-coder-0.5b-instruct-q4_k_m"
    if "gemma" in name:
        return "gemma-3-270m-q4_k_m"
    return "smollm2-135m-instruct-q4_1"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", default="8080")
    ap.add_argument("--hf-repo")
    ap.add_argument("--hf-file")
    ap.add_argument("--model", "-m")
    ap.add_argument("--alias")
    ap.add_argument("--ctx-size", "-c", type=int)
    ap.add_argument("--parallel", "-np", type=int)
    ap.add_argument("--api-key", action="append", default=[])
    ap.add_argument("--no-ui", action="store_true")
    ap.add_argument("--cors-origins")
    ap.add_argument("--chat-template")
    ap.add_argument("--chat-template-file")
    ap.add_argument("--slots", action="store_true")
    ap.add_argument("--tags")
    ap.add_argument("--reasoning", "-rea")
    ap.add_argument("--reasoning-format")
    ap.add_argument("--seed", "-s")
    ap.add_argument("--metrics", action="store_true")
    ap.add_argument("--batch-size", "-b", type=int)
    args, _unknown = ap.parse_known_args()
    if args.model and Path(args.model).exists():
        path = Path(args.model)
    else:
        path = MODELS / f"{local_model(args.hf_repo, args.hf_file or args.model)}.gguf"
    lines = ['responses_db = ":memory:"', "discover_models = false"]
    if args.cors_origins:
        lines.append(f"cors_allowed_origins = {[o.strip() for o in args.cors_origins.split(',')]!r}".replace("'", '"'))
    lines += ["[[models]]", f'path = "{path}"']
    if args.alias:
        # llama.cpp: several comma-separated aliases, the id being the first in sorted order.
        names = sorted({a.strip() for a in args.alias.split(",") if a.strip()})
        lines.append(f'alias = "{names[0]}"')
        if names[1:]:
            lines.append(f"aliases = {names[1:]!r}".replace("'", '"'))
    if args.tags:
        lines.append(f"tags = {[t.strip() for t in args.tags.split(',') if t.strip()]!r}".replace("'", '"'))
    if args.ctx_size and "minilm" not in path.name:
        # llama.cpp splits -c over its -np slots: a request gets ctx / np.
        lines.append(f"context_length = {args.ctx_size // max(args.parallel or 1, 1)}")
    if args.parallel and "minilm" not in path.name:
        lines.append(f"max_seqs = {max(args.parallel, 1)}")
    if args.batch_size and "minilm" not in path.name:
        # llama.cpp's logical batch: the most prompt tokens one step evaluates.
        lines.append(f"max_batched_tokens = {max(args.batch_size, 16)}")
    cfg = Path(tempfile.mkdtemp(prefix="slm-suite-")) / "slm.toml"
    cfg.write_text("\n".join(lines) + "\n")
    cmd = [str(ROOT / "target/release/slm"), "serve", "--config", str(cfg), "--host", args.host, "--port", str(args.port)]
    for k in args.api_key:
        cmd += ["--api-key", k]
    if args.no_ui:
        cmd.append("--no-ui")
    if args.slots:
        cmd.append("--slots")
    if args.chat_template_file:
        cmd += ["--chat-template-file", str(Path(args.chat_template_file).resolve())]
    elif args.chat_template:
        cmd += ["--chat-template", args.chat_template]
    if args.reasoning:
        cmd += ["--reasoning", args.reasoning]
    if args.reasoning_format:
        cmd += ["--reasoning-format", args.reasoning_format]
    if args.seed is not None:
        cmd += ["--seed", args.seed]
    if not args.metrics:
        cmd.append("--no-metrics")  # llama-server serves /metrics only with --metrics
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
