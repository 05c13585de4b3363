"""schemathesis against `openapi.yaml` and a real server (every operation; examples, coverage
and fuzzing phases, 3 minutes, fixed seed): no 5xx, and every status, content type and
response body — each server-sent event's JSON included — as the spec says. The model's
context is small so that any generated `max_tokens` ends quickly."""

import os
import subprocess
from pathlib import Path

from conftest import MODELS, QWEN, ROOT, Server

KEY = "schemathesis-key"


def test_schemathesis_finds_no_server_error_and_no_spec_mismatch(tmp_path):
    cfg = tmp_path / "slm.toml"
    cfg.write_text(
        # /slots on: off it is a 501 by design (llama.cpp's), which the 5xx check would flag.
        f'api_keys = ["{KEY}"]\nresponses_db = ":memory:"\nslots_endpoint = true\n'
        f'[[models]]\npath = "{MODELS / (QWEN + ".gguf")}"\ncontext_length = 96\nkv_cache_mb = 64\n'
    )
    s = Server(["--config", str(cfg)], api_key=None)
    try:
        st = Path(os.sys.executable).parent / "schemathesis"
        cmd = [
            str(st), "run", str(ROOT / "openapi.yaml"), "--url", s.base,
            "-H", f"Authorization: Bearer {KEY}",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "-n", "25", "--seed", "1", "--workers", "2",
            "--max-time", "180", "--request-timeout", "60",
            "--suppress-health-check", "all", "--no-color",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
        out = r.stdout + r.stderr
        print(out[-6000:])
        assert r.returncode == 0, out[-12000:]
        assert s.proc.poll() is None, "the server died"
    finally:
        s.stop()
